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
# other block shapes (BLOCK_M > BLOCK_N ratios, BLOCK_M == BLOCK_N) on a few cases
INTERP_ALT = [((32, 32, 4, 2), {"dkdv": (32, 32, 4, 2), "dq": (32, 32, 4, 2)}),
              ((64, 16, 4, 2), {"dkdv": (16, 64, 4, 2), "dq": (64, 16, 4, 2)})]


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


def _patch_interpreter_numpy():
    """Triton 3.6's interpreter converts scalar tensors with int(array of shape (1,)), which
    numpy >= 2.4 rejects (it breaks `range(lo, hi)` with tensor bounds). Convert via .reshape."""
    import numpy as np
    import triton.runtime.interpreter as interp

    original = interp._patch_lang_tensor
    if getattr(original, "_qbench_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patched._qbench_patched = True
    interp._patch_lang_tensor = patched


def interpreter_main():
    assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1 before importing triton"
    _patch_interpreter_numpy()
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


@pytest.fixture(scope="module")
def interpreter_results():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "interpret"], env=env,
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"interpreter run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULTS "):])


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


@pytest.fixture
def default_configs(monkeypatch):
    """Shape-class tests run the fixed default config (fast compile); test_gpu_every_config covers
    each autotune candidate."""
    monkeypatch.setenv("QBENCH_SOFTPICK_AUTOTUNE", "0")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", gpu_cases())
def test_gpu_matches_float64(case, default_configs):
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
    """Every autotune candidate (forward, dkdv, dq) computes the same function (bf16, odd T,
    right padding, no GQA: the benchmark's specialization, so its compiles are reused)."""
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
def test_gpu_autotuned_path_and_strided_inputs():
    """The default (autotuned) path on q/k/v that are transposed views of [B, T, H, D] tensors,
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
    print("\nautotuned strided: " + " ".join(f"{e:.2e}" for e in errs))
    assert max(errs) < TOL[torch.bfloat16]


if __name__ == "__main__":
    if sys.argv[1:] == ["interpret"]:
        interpreter_main()
    else:
        sys.exit(pytest.main([__file__, "-q", *sys.argv[1:]]))
