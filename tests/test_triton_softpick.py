"""The softpick Triton kernel against a float64 reference.

Two groups:
- interpreter tests (CPU): the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set in
  a subprocess before triton is imported) on small shapes, fp32 and fp16 (the interpreter has no
  bf16). They run wherever triton is installed.
- GPU tests (`-m gpu`): fresh random inputs for every shape class, fp16 and bf16, compared by
  ||out - ref|| / ||ref|| for the output and for dq, dk, dv; poisoned outputs must be fully
  written; rows whose scores are all <= 0 must be exact zeros. They skip without CUDA.

Run this file as a script (`python tests/test_triton_softpick.py interpret`) to print the
interpreter results as JSON.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()

# Relative-error tolerances (METHOD.md bands): fp32 runs land near 1e-7 on the interpreter
# (tf32 dots on a GPU land near 3e-4); fp16 operands near 3e-4; bf16 near 3e-3.
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}


# --------------------------------------------------------------------------- reference
def reference64(q, k, v, seq_lens=None, eps=1e-6, scale=None):
    """Causal softpick attention in float64 (differentiable). k, v may have fewer heads (GQA).
    Same convention as the kernel and qbench.attention.reference: shift m = max(0, rowmax over
    visible keys), detached; eps added to the shifted denominator."""
    q, k, v = q.double(), k.double(), v.double()
    b, h, t, d = q.shape
    g = h // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    pos = torch.arange(t, device=q.device)
    valid = (pos[None, :] <= pos[:, None])[None, None]
    if seq_lens is not None:
        lens = torch.as_tensor(seq_lens, device=q.device).long()
        valid = valid & (pos[None, :] < lens[:, None])[:, None, None, :]
    s = s.masked_fill(~valid, 0.0)
    m = s.amax(-1, keepdim=True).clamp_min(0.0).detach()
    a = (torch.exp(s - m) - torch.exp(-m)).masked_fill(~valid, 0.0)
    p = torch.relu(a) / (a.abs().sum(-1, keepdim=True) + eps)
    return p @ v


def rel_err(x, ref):
    x, ref = x.double(), ref.double()
    den = ref.norm().item()
    return (x - ref).norm().item() / den if den > 0 else (x - ref).norm().item()


def make_case(b, h, hkv, t, d, dtype, device, seed, lens=None, neg_rows=(), scale=1.0):
    """Random q, k, v, dO (never zeros). neg_rows: query rows whose scores are all < 0 (k > 0
    everywhere, those q rows < 0)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g) * scale
    k = torch.randn(b, hkv, t, d, generator=g) * scale
    v = torch.randn(b, hkv, t, d, generator=g)
    do = torch.randn(b, h, t, d, generator=g)
    if len(neg_rows):
        k = k.abs() + 0.05
        q[:, :, list(neg_rows)] = -(q[:, :, list(neg_rows)].abs() + 0.05)
    q, k, v, do = (x.to(dtype).to(device) for x in (q, k, v, do))
    if lens is not None:
        lens = torch.tensor(lens, dtype=torch.int32, device=device)
    return q, k, v, do, lens


_STANDALONE = {}


def _kernel_module():
    """qbench.attention.triton_softpick; in the interpreter subprocess it is loaded straight from
    its file, which skips importing qbench (and transformers) there."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        if "mod" not in _STANDALONE:
            import importlib.util as iu

            spec = iu.spec_from_file_location("_triton_softpick_standalone",
                                              REPO / "qbench" / "attention" / "triton_softpick.py")
            mod = iu.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            _STANDALONE["mod"] = mod
        return _STANDALONE["mod"]
    from qbench.attention import triton_softpick

    return triton_softpick


def run_case(case, device, fwd_config=None, bwd_configs=None):
    """Kernel vs float64 reference on one case. Outputs are written into NaN-poisoned buffers.
    Returns a dict of relative errors and flags."""
    tsp = _kernel_module()
    softpick_attention, softpick_backward, softpick_forward = tsp.softpick_attention, tsp.softpick_backward, tsp.softpick_forward
    b, h, hkv, t, d, dtype = (case[key] for key in ("b", "h", "hkv", "t", "d", "dtype"))
    q, k, v, do, lens = make_case(b, h, hkv, t, d, dtype, device, case["seed"], case.get("lens"),
                                  case.get("neg_rows", ()), case.get("scale", 1.0))
    poison = lambda x: torch.full_like(x, float("nan"))  # noqa: E731
    o, lse = softpick_forward(q, k, v, lens, out=poison(q), config=fwd_config)
    dq, dk, dv = softpick_backward(q, k, v, o, lse, do, lens, dq=poison(q), dk=poison(k), dv=poison(v),
                                   configs=bwd_configs)
    qr, kr, vr = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference64(qr, kr, vr, lens)
    ref.backward(do.double())
    # A query with one visible key has an eps-sized true gradient (p = a / (a + eps)), so for
    # T = 1 the gradient error is measured against ||dO|| instead of the (near-zero) reference.
    gerr = rel_err if t > 1 else (lambda x, r: (x.double() - r).norm().item() / do.double().norm().item())
    res = {
        "name": case["name"],
        "out": rel_err(o, ref), "dq": gerr(dq, qr.grad), "dk": gerr(dk, kr.grad), "dv": rel_err(dv, vr.grad),
        "finite": bool(all(torch.isfinite(x).all() for x in (o, lse, dq, dk, dv))),
    }
    rows = list(case.get("neg_rows", ()))
    if rows:
        res["zero_rows"] = bool((o[:, :, rows] == 0).all() and (ref[:, :, rows] == 0).all())
    # the public autograd entry point gives the same numbers
    if case.get("autograd", False):
        qa, ka, va = (x.detach().clone().requires_grad_() for x in (q, k, v))
        out = softpick_attention(qa, ka, va, seq_lens=lens)
        out.backward(do)
        tol = TOL[dtype]
        res["autograd_same"] = bool(rel_err(out, ref) < tol and rel_err(qa.grad, qr.grad) < tol
                                    and rel_err(ka.grad, kr.grad) < tol and rel_err(va.grad, vr.grad) < tol)
    return res


# ------------------------------------------------------------------ interpreter (CPU) tests
INTERP_FWD = (32, 16, 4, 2)
INTERP_BWD = {"dkdv": (16, 32, 4, 2), "dq": (32, 16, 4, 2)}
# other block shapes (BLOCK_M > BLOCK_N ratios, BLOCK_M == BLOCK_N) and the TMA variant (tensor
# descriptors, which the interpreter emulates) on a few cases
INTERP_ALT = [((32, 32, 4, 2), {"dkdv": (32, 32, 4, 2), "dq": (32, 32, 4, 2)}),
              ((64, 16, 4, 2), {"dkdv": (16, 64, 4, 2), "dq": (64, 16, 4, 2)}),
              ((32, 16, 4, 2, "tma"), {"dkdv": (16, 32, 4, 2, "tma"), "dq": (32, 16, 4, 2, "tma")})]
# a table with a bucket of its own (T <= 64) and defaults elsewhere: which config runs, and twice
# the same bits
INTERP_TABLE = {"configs": {
    "fwd": {"64": {"default": [32, 16, 4, 2], "64": [16, 16, 4, 2, "tma"]}, "128": {"default": [32, 32, 4, 2]}},
    "dkdv": {"64": {"default": [16, 32, 4, 2], "64": [16, 16, 4, 2]}, "128": {"default": [16, 32, 4, 2]}},
    "dq": {"64": {"default": [32, 16, 4, 2], "64": [16, 16, 4, 2, "tma"]}, "128": {"default": [32, 32, 4, 2]}},
}}


def interpreter_cases():
    f32, f16 = torch.float32, torch.float16
    c = lambda name, b, h, hkv, t, d, dt, seed, **kw: dict(name=name, b=b, h=h, hkv=hkv, t=t, d=d,  # noqa: E731
                                                           dtype=dt, seed=seed, **kw)
    return [
        c("t1", 1, 1, 1, 1, 32, f32, 1),
        c("t16-d32", 1, 2, 2, 16, 32, f32, 2),
        c("t37-d64", 1, 2, 2, 37, 64, f32, 3),
        c("t64-d128", 1, 1, 1, 64, 128, f32, 4),
        c("t45-d32-gqa4", 1, 4, 1, 45, 32, f32, 5),
        c("t50-d64-gqa2-lens", 2, 4, 2, 50, 64, f32, 6, lens=[50, 13]),
        c("t33-d32-lens-0-1", 3, 2, 1, 33, 32, f32, 7, lens=[0, 1, 32]),
        c("t40-d32-negrows", 2, 2, 1, 40, 32, f32, 8, neg_rows=(0, 5, 17, 39), lens=[40, 30]),
        c("t70-d64-large-scores", 1, 2, 1, 70, 64, f32, 9, scale=2.5),
        c("t41-d64-fp16-gqa", 2, 2, 1, 41, 64, f16, 10, lens=[41, 30]),
        c("t29-d128-fp16", 1, 2, 1, 29, 128, f16, 11, neg_rows=(3,)),
        c("t48-d32-autograd", 1, 2, 1, 48, 32, f32, 12, autograd=True),
        # rows that see few keys take the exact Delta path (one key: the true gradient is ~eps)
        c("t1-d32-fp16-fewkeys", 2, 4, 2, 1, 32, f16, 13),
        c("t20-d64-fp16-lens5", 2, 2, 1, 20, 64, f16, 14, lens=[20, 5]),
    ]


def interpreter_main():
    assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1 before importing triton"
    results = []
    for case in interpreter_cases():
        results.append(run_case(case, "cpu", INTERP_FWD, INTERP_BWD))
    for i, (fwd, bwd) in enumerate(INTERP_ALT):
        for case in interpreter_cases()[5:9]:
            res = run_case(case, "cpu", fwd, bwd)
            res["name"] += f"@alt{i}"
            results.append(res)
    for res in results:
        res["tol"] = TOL[torch.float16] if "fp16" in res["name"] else TOL[torch.float32]
    print("RESULTS " + json.dumps(results))
    print("TABLE " + json.dumps(table_path_runs()))


def table_path_runs():
    """With no config given, each kernel runs the table's config for its (head-dim class, T bucket);
    two calls on the same inputs give identical bits. Returns, per case, the configs that ran,
    the ones the table names, the label, and whether the two calls' outputs are bit-identical."""
    tsp = _kernel_module()
    runs = []
    with tsp.use_config_table(INTERP_TABLE):
        for case in interpreter_cases()[5:9]:   # T = 50, 33, 40 (bucket 64) and 70 (bucket 128)
            q, k, v, do, lens = make_case(case["b"], case["h"], case["hkv"], case["t"], case["d"], case["dtype"],
                                          "cpu", case["seed"], case.get("lens"), case.get("neg_rows", ()))
            outs = []
            for _ in range(2):
                o, lse = tsp.softpick_forward(q, k, v, lens)
                outs.append((o, lse, *tsp.softpick_backward(q, k, v, o, lse, do, lens)))
            ran = {name: list(cfg) for name, cfg in tsp.last_configs().items()}
            want = {name: list(tsp.table_config(name, case["d"], case["t"])) for name in ("fwd", "dkdv", "dq")}
            runs.append({"name": case["name"], "t": case["t"], "ran": ran, "table": want,
                         "label": tsp.backend_label(q.requires_grad_(), k, v),
                         "identical": all(torch.equal(a, b) for a, b in zip(*outs))})
    return runs


@pytest.fixture(scope="module")
def interpreter_run():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "interpret"], env=env,
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    found = {tag: json.loads(ln[len(tag) + 1:]) for ln in proc.stdout.splitlines()
             for tag in ("RESULTS", "TABLE") if ln.startswith(tag + " ")}
    assert proc.returncode == 0 and len(found) == 2, \
        f"interpreter run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return found


@pytest.fixture(scope="module")
def interpreter_results(interpreter_run):
    return interpreter_run["RESULTS"]


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_interpreter_forward_and_gradients_match_float64(interpreter_results):
    bad = []
    for res in interpreter_results:
        errs = {key: res[key] for key in ("out", "dq", "dk", "dv")}
        if not res["finite"] or max(errs.values()) > res["tol"] or not res.get("zero_rows", True) \
                or not res.get("autograd_same", True):
            bad.append(res)
    assert len(interpreter_results) == len(interpreter_cases()) + 4 * len(INTERP_ALT)
    assert not bad, json.dumps(bad, indent=1)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_interpreter_table_configs_run_and_give_identical_bits(interpreter_run):
    runs = interpreter_run["TABLE"]
    assert [r["t"] for r in runs] == [50, 33, 40, 70]
    for r in runs:
        assert r["ran"] == r["table"], r
        assert r["identical"], r
        bucket = "64" if r["t"] <= 64 else "default"
        want = {name: INTERP_TABLE["configs"][name]["64"][bucket] for name in ("fwd", "dkdv", "dq")}
        assert {name: cfg[:4] + (["tma"] if cfg[4] else []) for name, cfg in r["ran"].items()} == want, r
        assert r["label"] == ",".join(f"{name}({','.join(str(x) for x in cfg)})" for name, cfg in want.items())


def test_reference64_matches_model_reference():
    """The kernel's reference convention is the model's (eps on the shifted denominator)."""
    from qbench.attention.reference import softpick_reference

    q, k, v, _, lens = make_case(2, 4, 2, 23, 16, torch.float32, "cpu", 0, [23, 9])
    mask = (torch.arange(23)[None, :] < lens[:, None].long()).long()
    want = softpick_reference(q.double(), k.double(), v.double(), mask)
    assert rel_err(reference64(q, k, v, lens), want) < 1e-6  # the model reference computes in float32


def test_reference64_gradient_formula():
    """The backward formula the kernel implements, checked against autograd in float64:
    dx_j = e^{x_j-m} ([a_j>0] dp_j - sign(a_j) sum_i dp_i p_i) / (S + eps)."""
    torch.manual_seed(0)
    x = (torch.randn(6, 30, dtype=torch.float64) * 2).requires_grad_()
    dp = torch.randn(6, 30, dtype=torch.float64)
    eps = 1e-6
    m = x.detach().amax(-1, keepdim=True).clamp_min(0)
    a = torch.exp(x - m) - torch.exp(-m)
    z = a.abs().sum(-1, keepdim=True) + eps
    p = torch.relu(a) / z
    (p * dp).sum().backward()
    delta = (dp * p).sum(-1, keepdim=True)
    formula = torch.exp(x - m) * ((a > 0) * dp - torch.sign(a) * delta) / z
    assert torch.allclose(x.grad, formula.detach(), rtol=1e-10, atol=1e-12)


def test_module_imports_and_reports_availability():
    from qbench.attention import triton_softpick

    assert triton_softpick.is_available() == (HAS_TRITON and HAS_CUDA)


# ----------------------------------------------------------------------------- GPU tests
gpu = pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")


def gpu_cases():
    """Every shape class, fp16 and bf16. QBENCH_TEST_SEED shifts all seeds (fresh inputs per run)."""
    cases = []
    seed = 100 + 1000 * int(os.environ.get("QBENCH_TEST_SEED", "0"))
    for dtype in (torch.float16, torch.bfloat16):
        for d in (32, 64, 128):
            for t, b, h, hkv, lens in ((1, 2, 4, 2, None), (77, 2, 8, 2, [77, 31]), (256, 2, 8, 2, None),
                                       (1000, 2, 8, 2, [1000, 517]), (2049, 1, 8, 2, None)):
                seed += 1
                name = f"{str(dtype)[6:]}-d{d}-t{t}-b{b}h{h}kv{hkv}" + ("-lens" if lens else "")
                cases.append(pytest.param(dict(name=name, b=b, h=h, hkv=hkv, t=t, d=d, dtype=dtype, seed=seed,
                                               lens=lens, neg_rows=(0, 3, t // 2, t - 1) if t > 4 else (),
                                               autograd=(t == 77)), id=name))
    return cases


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", gpu_cases())
def test_gpu_matches_float64(case):
    """The table's configs on every shape class; test_gpu_every_config covers each candidate."""
    res = run_case(case, "cuda")
    tol = TOL[case["dtype"]]
    print(f"\n{res['name']}: out {res['out']:.2e} dq {res['dq']:.2e} dk {res['dk']:.2e} dv {res['dv']:.2e}")
    assert res["finite"], res
    assert max(res[key] for key in ("out", "dq", "dk", "dv")) < tol, res
    assert res.get("zero_rows", True), res
    assert res.get("autograd_same", True), res


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_every_config(d):
    """Every tuning candidate (forward, dkdv, dq; tma variants too) computes the same function
    (bf16, odd T, right padding, no GQA: the benchmark's specialization)."""
    from qbench.attention import triton_softpick as tsp

    case = dict(name=f"configs-d{d}", b=2, h=16, hkv=16, t=1111, d=d, dtype=torch.bfloat16, seed=7 + d,
                lens=[1111, 600], neg_rows=(2, 700))
    fwds, dkdvs, dqs = tsp.FWD_CONFIGS[d], tsp.DKDV_CONFIGS[d], tsp.DQ_CONFIGS[d]
    for i in range(max(len(fwds), len(dkdvs), len(dqs))):
        fwd = fwds[i % len(fwds)]
        bwd = {"dkdv": dkdvs[i % len(dkdvs)], "dq": dqs[i % len(dqs)]}
        res = run_case(case, "cuda", fwd, bwd)
        print(f"\n{fwd} {bwd}: out {res['out']:.2e} dq {res['dq']:.2e} dk {res['dk']:.2e} dv {res['dv']:.2e}")
        assert res["finite"] and res.get("zero_rows", True), res
        assert max(res[key] for key in ("out", "dq", "dk", "dv")) < TOL[torch.bfloat16], (fwd, bwd, res)


@pytest.mark.gpu
@gpu
def test_gpu_table_path_and_strided_inputs():
    """The default (table) path on q/k/v that are transposed views of [B, T, H, D] tensors,
    as the model produces them."""
    from qbench.attention.triton_softpick import softpick_attention

    b, t, h, hkv, d = 2, 300, 8, 4, 64
    g = torch.Generator(device="cpu").manual_seed(3)
    q = torch.randn(b, t, h, d, generator=g).to("cuda", torch.bfloat16).transpose(1, 2).requires_grad_()
    k = torch.randn(b, t, hkv, d, generator=g).to("cuda", torch.bfloat16).transpose(1, 2).requires_grad_()
    v = torch.randn(b, t, hkv, d, generator=g).to("cuda", torch.bfloat16).transpose(1, 2).requires_grad_()
    do = torch.randn(b, h, t, d, generator=g).to("cuda", torch.bfloat16)
    lens = torch.tensor([300, 123], dtype=torch.int32, device="cuda")
    out = softpick_attention(q, k, v, seq_lens=lens)
    out.backward(do)
    qr, kr, vr = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference64(qr, kr, vr, lens)
    ref.backward(do.double())
    errs = [rel_err(out, ref), rel_err(q.grad, qr.grad), rel_err(k.grad, kr.grad), rel_err(v.grad, vr.grad)]
    print("\ntable path, strided: " + " ".join(f"{e:.2e}" for e in errs))
    assert max(errs) < TOL[torch.bfloat16]


@pytest.mark.gpu
@gpu
def test_gpu_same_bits_twice_and_the_label_names_the_configs():
    """Evaluation's determinism: the same inputs give identical bits call after call (fresh output
    buffers, the caching allocator reusing memory in between), and attend() records the configs."""
    from qbench.attention import attend, backend_log
    from qbench.attention import triton_softpick as tsp

    b, t, h, d = 3, 777, 8, 64
    g = torch.Generator(device="cpu").manual_seed(11)
    q, k, v = (torch.randn(b, t, h, d, generator=g).to("cuda", torch.bfloat16).transpose(1, 2) for _ in range(3))
    mask = (torch.arange(t)[None, :] < torch.tensor([777, 500, 64])[:, None]).long().cuda()
    runs = []
    for _ in range(3):
        with backend_log() as seen:
            out, _ = attend(q, k, v, "softpick", key_mask=mask)
        runs.append(out)
        torch.cuda.empty_cache()
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    label = tsp.backend_label(q, k, v)
    assert seen == {"softpick:triton:" + label}
    assert label == f"fwd({tsp.table_config('fwd', d, t).label()})"
    qg, kg, vg = (x.detach().clone().requires_grad_() for x in (q, k, v))
    do = torch.randn_like(qg)
    grads = []
    for _ in range(2):
        out = tsp.softpick_attention(qg, kg, vg, seq_lens=mask.sum(1))
        grads.append(torch.autograd.grad(out, (qg, kg, vg), do))
    assert all(torch.equal(x, y) for x, y in zip(*grads))


# ------------------------------------------------------------------ the config table (no GPU)
def _tsp():
    from qbench.attention import triton_softpick

    return triton_softpick


def _table_copy():
    return json.loads((REPO / "qbench" / "attention" / "kernel_configs.json").read_text())


def test_committed_table_loads_and_covers_every_kernel():
    tsp = _tsp()
    version = tsp.config_table_version()
    assert len(version) == 12 and int(version, 16) >= 0 and version == tsp.config_table_version()
    for name in tsp.KERNELS:
        for d in (32, 64, 128):
            for t in (1, 64, 65, 1000, 4096, 100_000):
                cfg = tsp.table_config(name, d, t)
                assert isinstance(cfg, tsp.KernelConfig) and tsp.as_config(cfg, name) == cfg
    assert [tsp.t_bucket(t) for t in (1, 64, 65, 128, 129, 4096, 4097)] == [64, 64, 128, 128, 256, 4096, 8192]
    for name, by_class in tsp.CONFIGS.items():   # every tuning candidate is a valid config
        for cands in by_class.values():
            for c in cands:
                tsp.as_config(c, name)


def test_table_version_hashes_the_configs_only():
    tsp = _tsp()
    base = tsp.config_table_version()
    raw = _table_copy()
    raw["about"] = "another note"
    with tsp.use_config_table(raw):
        assert tsp.config_table_version() == base
    raw["configs"]["fwd"]["128"]["4096"] = [128, 128, 8, 2, "tma"]
    with tsp.use_config_table(raw):
        assert tsp.config_table_version() != base
        assert tsp.table_config("fwd", 128, 3000) == tsp.KernelConfig(128, 128, 8, 2, True)
        assert tsp.table_config("fwd", 128, 5000) == tsp.table_config("fwd", 128, 100)   # the default
    assert tsp.config_table_version() == base


@pytest.mark.parametrize("change,field", [
    (lambda c: c.pop("dq"), "configs"),
    (lambda c: c["fwd"].pop("64"), "configs.fwd"),
    (lambda c: c["fwd"]["128"].pop("default"), "configs.fwd.128"),
    (lambda c: c["fwd"]["128"].update({"100": [128, 64, 8, 3]}), "configs.fwd.128.100"),
    (lambda c: c["dq"]["64"].update({"default": [128, 96, 8, 3]}), "configs.dq.64.default"),
    (lambda c: c["dkdv"]["64"].update({"default": [64, 32, 8, 3]}), "configs.dkdv.64.default"),
    (lambda c: c["fwd"]["64"].update({"default": [128, 64, 8, 3, "fast"]}), "configs.fwd.64.default"),
    (lambda c: c["fwd"]["64"].update({"default": [128, 64, 8]}), "configs.fwd.64.default"),
])
def test_bad_tables_are_refused_naming_the_field(change, field):
    tsp = _tsp()
    raw = _table_copy()
    change(raw["configs"])
    with pytest.raises(tsp.KernelConfigError, match=field.replace(".", r"\.")):
        with tsp.use_config_table(raw, "bad.json"):
            pass
    from qbench.errors import QBenchError

    assert issubclass(tsp.KernelConfigError, QBenchError)


if __name__ == "__main__":
    if sys.argv[1:] == ["interpret"]:
        interpreter_main()
    else:
        sys.exit(pytest.main([__file__, "-q", *sys.argv[1:]]))
