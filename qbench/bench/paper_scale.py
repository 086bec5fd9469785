"""Speed at the paper's sizes (issue 19), measured in one command on one GPU, from random-initialised
models (qbench/bench/models.py; metrics of random weights mean nothing, only the times count):

    PYTHONUNBUFFERED=1 qbench bench paper-scale --out $OUT     # (= python -m qbench.bench.paper_scale --out $OUT)
    qbench bench paper-scale --tiny --out DIR                  # every step on tiny shapes, CPU, ~30 s

Steps (--steps, default all, run in the order gptq, eval, cell, kernel: the kernel's new variants
last, since a variant that broke the CUDA context would stop every step after it):
  kernel  softpick kernel vs torch SDPA (default backend and flash) at T=4096, D=128, bf16, causal,
          16k tokens per call (B=4, H=16), forward and forward+backward; every candidate config of
          each kernel (tile sizes, stages, the tma variant) checked against float64 and timed; the
          table's configs run twice (bit-identical?); the paper models' head dim (D=64) too; the
          matmul and copy ceilings measured first.
  gptq    GPTQ 4-bit (recipes/gptq.yaml: group 128, 128 x 512 calibration tokens) on a random 1.8B
          model with --gptq-layers blocks: seconds per block, extrapolated to the 32 blocks.
  eval    our scorer vs lm-eval's HFLM on a random --eval-size model (340M or 1.8B), paper task set
          (`qbench bench eval`'s code), --eval-limit examples per task.
  cell    one sweep cell at --eval-size (softpick arm, GPTQ 4-bit): its phases as sweep/runner.py computes
          them (load_checkpoint from a temporary folder, copy to the device, calibration batch,
          quantize, evaluate with --eval-limit), each timed.
Writes DIR/paper-scale.md and DIR/paper-scale.json; the short table is printed last.
--tiny: tiny shapes and models, the Triton interpreter when there is no GPU, a few examples per
task: a test that every step runs (tests/test_paper_scale.py).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from . import BenchError
from .attention import (accurate, bench, check_configs, copy_bandwidth, fwd_flops, matmul_ceiling,
                        target_inputs, time_backward, time_forward)

STEPS = ("gptq", "eval", "cell", "kernel")   # the kernel's new variants last: a broken CUDA context stops what follows
GOALS = {"fwd": 1.1, "fwdbwd": 1.25}   # ours / SDPA default backend at T=4096, D=128 bf16 (issue 19)
EVAL_GOALS = {"340M": 6.0, "1.8B": 3.0}   # scorer / HFLM end to end, all examples (issue 19)


def log(*a):
    print(*a, flush=True)


class Setup:
    """What a run measures on: full paper sizes on a GPU, or tiny shapes (--tiny)."""

    def __init__(self, tiny: bool, eval_limit, gptq_layers: int, out: Path, eval_size: str = "340M"):
        if eval_limit not in (None, "all") and not (str(eval_limit).isdigit() and int(eval_limit) > 0):
            raise BenchError(f"--eval-limit {eval_limit}: expected a number of examples >= 1, or 'all'")
        if eval_size not in EVAL_GOALS:
            raise BenchError(f"--eval-size {eval_size}: expected one of {sorted(EVAL_GOALS)}")
        if gptq_layers < 1:
            raise BenchError(f"--gptq-layers must be at least 1, got {gptq_layers}")
        if Path(out).exists() and not Path(out).is_dir():
            raise BenchError(f"--out {out}: exists and is not a folder")
        self.tiny, self.out = tiny, out
        self.cuda = torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        if not (self.cuda or tiny):
            raise BenchError("needs a CUDA device (or --tiny)")
        if not self.cuda:
            os.environ.setdefault("TRITON_INTERPRET", "1")   # the kernels on the CPU (before triton loads)
        self.kernel_shape = dict(t=64, d=32, tokens=128, hidden=64) if tiny else dict(t=4096, d=128)
        self.kernel_dtype = torch.bfloat16 if self.cuda else torch.float32   # the interpreter has no bf16
        self.model_dtype = "bfloat16" if self.cuda else "float32"
        self.gptq_size, self.eval_size = ("tiny", "tiny") if tiny else ("1.8B", eval_size)
        self.gptq_layers = gptq_layers
        self.eval_limit = (2 if tiny else 1000) if eval_limit is None else (None if eval_limit == "all" else int(eval_limit))

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


# ----------------------------------------------------------------------------- kernel
def sdpa_times(q, k, v, do, flash: bool):
    """(forward ms, forward+backward ms) of causal SDPA, default backend or flash forced."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    ctx = (lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)) if flash else contextlib.nullcontext
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))

    def fwd():
        with ctx(), torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def fwdbwd():
        with ctx():
            F.scaled_dot_product_attention(qg, kg, vg, is_causal=True).backward(do)

    return bench(fwd, rep=100), bench(fwdbwd, grad_to_none=[qg, kg, vg], rep=100)


def ours_fwdbwd(q, k, v, do):
    """Forward+backward ms of softpick_attention through autograd, with the config table in use."""
    from qbench.attention import triton_softpick as tsp

    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    return bench(lambda: tsp.softpick_attention(qg, kg, vg).backward(do), grad_to_none=[qg, kg, vg], rep=100)


def same_bits_twice(q, k, v, do):
    """The table's configs, forward and backward, twice on the same inputs: identical bits?"""
    from qbench.attention import triton_softpick as tsp

    outs = []
    for _ in range(2):
        qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
        out = tsp.softpick_attention(qg, kg, vg)
        out.backward(do)
        outs.append((out, qg.grad, kg.grad, vg.grad))
    return all(torch.equal(a, b) for a, b in zip(*outs))


def candidates(kernel, d, t, tiny):
    """The table's config first, then every other candidate (--tiny: the first tma one)."""
    from qbench.attention import triton_softpick as tsp

    table = tsp.table_config(kernel, d, t)
    cands = [table] + [c for c in (tsp.as_config(x, kernel) for x in tsp.CONFIGS[kernel][tsp._dclass(d)])
                       if c != table]
    return [table] + [c for c in cands if c.tma][:1] if tiny else cands


def step_kernel(setup: Setup, res: dict) -> None:
    """Fills `res` as it goes: the table's numbers first, then each candidate (tma ones last: the
    newest code, the likeliest to fail), so a failure keeps what came before."""
    from qbench.attention import triton_softpick as tsp

    shape = setup.kernel_shape
    t, d, dtype, dev = shape["t"], shape["d"], setup.kernel_dtype, setup.device
    res.update(T=t, D=d, dtype=str(dtype).replace("torch.", ""), table_version=tsp.config_table_version())
    if setup.cuda:
        res["matmul_tflops"], res["copy_gbs"] = matmul_ceiling(), copy_bandwidth()
        log(f"  ceilings: bf16 matmul {res['matmul_tflops']:.0f} TF/s, copy {res['copy_gbs']:.0f} GB/s")
    q, k, v, do = target_inputs(t, d, dtype, tokens=shape.get("tokens", 16384), hidden=shape.get("hidden", 2048),
                                device=dev)
    res["B"], res["H"] = q.shape[0], q.shape[1]
    res["flops_fwd"] = fwd_flops(q.shape[0], q.shape[1], t, d)
    res["sdpa_default"] = sdpa_times(q, k, v, do, flash=False)
    if setup.cuda:
        res["sdpa_flash"] = sdpa_times(q, k, v, do, flash=True)
    log(f"  SDPA default fwd {res['sdpa_default'][0]:.3f} ms, fwd+bwd {res['sdpa_default'][1]:.3f} ms")
    res["table_fwd_ms"], res["table_fwdbwd_ms"] = time_forward(q, k, v), ours_fwdbwd(q, k, v, do)
    res["same_bits_twice"] = same_bits_twice(q, k, v, do)
    log(f"  ours (table: {tsp.backend_label(q.requires_grad_(), k, v)}) fwd {res['table_fwd_ms']:.3f} ms, fwd+bwd "
        f"{res['table_fwdbwd_ms']:.3f} ms; twice on the same inputs: identical bits {res['same_bits_twice']}")
    q.requires_grad_(False)
    if setup.cuda:   # the paper models' head dim: table configs vs SDPA default at T=4096, D=64
        q64, k64, v64, do64 = target_inputs(4096, 64, dtype, device=dev)
        res["d64"] = {"ours": (time_forward(q64, k64, v64), ours_fwdbwd(q64, k64, v64, do64)),
                      "sdpa_default": sdpa_times(q64, k64, v64, do64, False),
                      "check": check_configs(64, dtype, device=dev, h=16)}
        log(f"  D=64: ours fwd {res['d64']['ours'][0]:.3f} fwd+bwd {res['d64']['ours'][1]:.3f} ms; SDPA default "
            f"{res['d64']['sdpa_default'][0]:.3f} / {res['d64']['sdpa_default'][1]:.3f} ms")
        del q64, k64, v64, do64
    check = dict(t=64, h=2) if setup.tiny else dict(t=1024, h=16)   # H=16: the timing shape's compiles
    res["candidates"] = rows = []
    for kernel in tsp.KERNELS:
        for cand in candidates(kernel, d, t, setup.tiny):
            cfgs = {"fwd": cand} if kernel == "fwd" else {"bwd": {kernel: cand}}
            row = {"kernel": kernel, "config": cand.label(), "table": cand == tsp.table_config(kernel, d, t)}
            rows.append(row)
            try:
                row["check"] = check_configs(d, dtype, device=dev, seed=len(rows), **check, **cfgs)
                row["accurate"] = accurate(row["check"])
                row["ms"] = time_forward(q, k, v, cand) if kernel == "fwd" else time_backward(q, k, v, do, {kernel: cand})
            except Exception as exc:  # noqa: BLE001 - a variant that does not compile is a result
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            log(f"  {kernel:4s} {row['config']:18s} " + (f"{row['ms']:.3f} ms, float64 check "
                f"{max(row['check'][x] for x in ('out', 'dq', 'dk', 'dv')):.2e}" if "ms" in row else row["error"]))
    best = {}
    for kernel in tsp.KERNELS:
        ok = [r for r in rows if r["kernel"] == kernel and r.get("accurate") and "ms" in r]
        best[kernel] = min(ok, key=lambda r: r["ms"])["config"] if ok else None
    res["best"] = best
    if all(best.values()):
        raw = json.loads(tsp.CONFIG_TABLE.read_text())
        for kernel, label in best.items():
            raw["configs"][kernel][str(tsp._dclass(d))][str(tsp.t_bucket(t))] = [
                int(x) if x.isdigit() else x for x in label.split(",")]
        with tsp.use_config_table(raw, "the fastest accurate candidates"):
            res["best_fwdbwd_ms"] = ours_fwdbwd(q, k, v, do)
        res["best_table"] = raw["configs"]
        log(f"  best candidates {best}: fwd+bwd {res['best_fwdbwd_ms']:.3f} ms")


# ----------------------------------------------------------------------------- gptq
def gptq_recipe(setup):
    from qbench.quant import load_recipe

    recipe = load_recipe("gptq")
    if setup.tiny:
        recipe = recipe.replace(calib={"samples": 4, "seq_len": 32, "seed": 0},
                                weight={**recipe.weight, "group_size": 32})
    return recipe


def step_gptq(setup: Setup, res: dict) -> None:
    from qbench.bench import models as bench_models
    from qbench.quant import quantize

    recipe = gptq_recipe(setup)
    model = bench_models.random_model(setup.gptq_size, "softmax", device=setup.device,
                                      dtype=getattr(torch, setup.model_dtype), layers=setup.gptq_layers)
    c = recipe.calib
    calib = torch.randint(0, 8192, (c["samples"], c["seq_len"]), generator=torch.Generator().manual_seed(0))
    setup.sync()
    t0 = time.perf_counter()
    report = quantize(model, recipe, 4, calib=calib)
    setup.sync()
    seconds = time.perf_counter() - t0
    blocks = bench_models.SIZES[setup.gptq_size]["num_hidden_layers"]
    res.update(size=setup.gptq_size, blocks_run=setup.gptq_layers, blocks_model=blocks, seconds=seconds,
               per_block=seconds / setup.gptq_layers, extrapolated=seconds / setup.gptq_layers * blocks,
               layers_quantized=report.layers_quantized, calib=f"{c['samples']} x {c['seq_len']}",
               dtype=setup.model_dtype)
    log(f"  GPTQ 4-bit, {setup.gptq_size} with {setup.gptq_layers} blocks: {seconds:.1f} s "
        f"({res['per_block']:.2f} s per block; x {blocks} blocks = {res['extrapolated']:.0f} s extrapolated)")


# ----------------------------------------------------------------------------- eval
def step_eval(setup: Setup, res: dict) -> None:
    from qbench.eval.bench import bench_eval

    r = bench_eval(model_path=f"random:{setup.eval_size}", tasks="paper", limit=setup.eval_limit,
                   device=setup.device, dtype=setup.model_dtype, out=setup.out / "paper-scale-eval.json",
                   log=lambda *a: log("  ", *a))
    res.update({k: r[k] for k in ("seconds", "speedup", "scoring_seconds", "scoring_speedup", "max_metric_difference",
                                  "n_samples", "limit", "scorer_stats", "dtype", "shared_rows_speedup",
                                  "answer_flips_vs_hf")}, size=setup.eval_size)


# ----------------------------------------------------------------------------- one cell
def step_cell(setup: Setup, res: dict) -> None:
    """The phases of one cell (qbench/sweep/compute.py), at --eval-size, GPTQ 4-bit, softpick."""
    from qbench import paths
    from qbench.bench import models as bench_models
    from qbench.eval import evaluate
    from qbench.model import load_checkpoint
    from qbench.quant import quantize, recipe_calibration

    timing = {}
    recipe = gptq_recipe(setup)
    dtype = getattr(torch, setup.model_dtype)
    with tempfile.TemporaryDirectory(prefix="qbench-cell-") as tmp:
        t0 = time.perf_counter()
        folder = Path(tmp) / "softpick"
        bench_models.save_random_model(setup.eval_size, "softpick", folder, dtype=dtype, device=setup.device)
        save_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        ckpt = load_checkpoint(folder, device="cpu", dtype=dtype)   # ModelSource keeps masters on the CPU
        timing["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = copy.deepcopy(ckpt.model).to(setup.device).eval()
    setup.sync()
    timing["copy"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    calib = recipe_calibration(recipe, ckpt.tokenizer, paths.BUNDLED_HELDOUT / "heldout_calib.txt.gz")
    timing["calibration_batch"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    quantize(model, recipe, 4, calib=calib)
    setup.sync()
    timing["quantize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, details = evaluate(model, ckpt.tokenizer, tasks="paper", limit=setup.eval_limit, online=False,
                          return_details=True)
    timing["evaluate"] = time.perf_counter() - t0
    res.update(size=setup.eval_size, attention="softpick", recipe=f"gptq 4-bit ({recipe.calib['samples']} x "
               f"{recipe.calib['seq_len']} calibration tokens)", limit=setup.eval_limit, timing=timing,
               cell_seconds=sum(timing.values()), save_seconds=save_seconds, dtype=setup.model_dtype,
               n_samples=details.get("n_samples"))
    log("  " + ", ".join(f"{k} {v:.1f} s" for k, v in timing.items()) + f" (building and saving the random "
        f"model took {save_seconds:.1f} s, not part of a cell)")


# ----------------------------------------------------------------------------- report
def _ratio(a, b):
    return a / b if isinstance(a, float) and isinstance(b, float) and b else float("nan")


def summary_rows(results: dict) -> list[tuple[str, str, str]]:
    """(measurement, value, goal) rows of the short table."""
    rows = []
    k = results.get("kernel", {})
    if "table_fwdbwd_ms" in k:
        sd_f, sd_fb = k["sdpa_default"]
        shape = f"T={k['T']} D={k['D']} {k['dtype']}"
        rows.append((f"kernel fwd, table, ours/SDPA-default ({shape})",
                     f"{_ratio(k['table_fwd_ms'], sd_f):.2f} ({k['table_fwd_ms']:.3f} vs {sd_f:.3f} ms)",
                     f"<= {GOALS['fwd']}"))
        rows.append((f"kernel fwd+bwd, table, ours/SDPA-default ({shape})",
                     f"{_ratio(k['table_fwdbwd_ms'], sd_fb):.2f} ({k['table_fwdbwd_ms']:.3f} vs {sd_fb:.3f} ms)",
                     f"<= {GOALS['fwdbwd']}"))
        best = k.get("best", {})
        fwd_best = [r for r in k.get("candidates", []) if r["kernel"] == "fwd" and r["config"] == best.get("fwd")]
        if fwd_best:
            rows.append((f"kernel fwd, best candidate {best['fwd']}", f"{_ratio(fwd_best[0]['ms'], sd_f):.2f}",
                         f"<= {GOALS['fwd']}"))
        if "best_fwdbwd_ms" in k:
            rows.append((f"kernel fwd+bwd, best candidates {best['dkdv']} / {best['dq']}",
                         f"{_ratio(k['best_fwdbwd_ms'], sd_fb):.2f}", f"<= {GOALS['fwdbwd']}"))
        if "sdpa_flash" in k:
            rows.append(("kernel fwd / fwd+bwd, table, ours/SDPA-flash",
                         f"{_ratio(k['table_fwd_ms'], k['sdpa_flash'][0]):.2f} / "
                         f"{_ratio(k['table_fwdbwd_ms'], k['sdpa_flash'][1]):.2f}", "-"))
        if "d64" in k:
            o, sd = k["d64"]["ours"], k["d64"]["sdpa_default"]
            rows.append(("kernel fwd / fwd+bwd, table, ours/SDPA-default at D=64",
                         f"{_ratio(o[0], sd[0]):.2f} / {_ratio(o[1], sd[1]):.2f}", "-"))
    if "same_bits_twice" in k:
        rows.append(("kernel: the table's configs twice, identical bits", str(k["same_bits_twice"]), "True"))
    if k.get("candidates"):
        bad = [f"{r['kernel']} {r['config']}" for r in k["candidates"] if not r.get("accurate")]
        rows.append(("kernel candidates failing (float64 check or error)",
                     f"{len(bad)} of {len(k['candidates'])}" + (f": {', '.join(bad)}" if bad else ""), "0"))
    g = results.get("gptq")
    if isinstance(g, dict) and "seconds" in g:
        rows.append((f"GPTQ 4-bit {g['size']} ({g['dtype']}), per block / model extrapolated from {g['blocks_run']} "
                     "blocks", f"{g['per_block']:.2f} s / {g['extrapolated']:.0f} s", "-"))
    e = results.get("eval")
    if isinstance(e, dict) and "speedup" in e:
        size = e.get("size", "340M")
        rows.append((f"scorer vs HFLM at {size}, end to end / in the scorer (limit {e['limit'] or 'none'}, {e['dtype']})",
                     f"{e['speedup']:.2f}x / {e['scoring_speedup']:.2f}x ({e['seconds']['qbench']:.1f} vs "
                     f"{e['seconds']['hf']:.1f} s)", f">= {EVAL_GOALS.get(size, 6.0):g}x at {size}, all examples"))
        rows.append(("scorer vs HFLM, largest metric difference; items whose answer differs",
                     f"{e['max_metric_difference']:.2g}; " + ", ".join(f"{n} {k}" for n, k in e["answer_flips_vs_hf"].items()),
                     "-"))
        rows.append(("our scorer, shared-context rows vs plain rows (end to end)",
                     f"{e['shared_rows_speedup']:.2f}x ({e['seconds']['qbench_plain_rows']:.1f} vs "
                     f"{e['seconds']['qbench']:.1f} s)", "-"))
    c = results.get("cell")
    if isinstance(c, dict) and "timing" in c:
        rows.append((f"one cell {c['size']} {c['recipe']}, limit {c['limit']}",
                     " / ".join(f"{k} {v:.1f}" for k, v in c["timing"].items()) + f" s = {c['cell_seconds']:.1f} s",
                     "-"))
    for step, r in results.items():
        if isinstance(r, dict) and "error" in r:
            rows.append((f"step {step}", "FAILED: " + r["error"].splitlines()[0][:120], "-"))
    return rows


def markdown(info: dict, results: dict) -> str:
    lines = [f"# Speed at the paper's sizes ({info['device']})", "",
             f"Command: `{info['command']}` ({info['date']}; torch {info['torch']}, triton {info['triton']}, "
             f"CUDA {info['cuda']}; {info['seconds']:.0f} s). Random-initialised models "
             "(qbench/bench/models.py): only the times mean anything.", "",
             "| measurement | value | goal |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in summary_rows(results)]
    k = results.get("kernel", {})
    if k.get("candidates"):
        f = k["flops_fwd"]
        lines += ["", f"Kernel candidates at T={k['T']}, D={k['D']}, B={k['B']}, H={k['H']} ({k['dtype']}, config table "
                  f"{k['table_version']}): forward ms for fwd, backward-only ms for dkdv/dq (the other backward kernel "
                  "at the table's config); float64 check on fresh inputs (B=2, H=16, T=1024, second row right-padded), max "
                  "relative error of out, dq, dk, dv.", "",
                  "| kernel | config | in table | ms | TF/s | float64 check | accurate |", "|---|---|---|---|---|---|---|"]
        for r in k["candidates"]:
            if "ms" not in r:
                lines.append(f"| {r['kernel']} | {r['config']} | {r['table']} | {r.get('error', '')} | | | |")
                continue
            work = f if r["kernel"] == "fwd" else 2.5 * f   # a dkdv/dq row times the whole backward
            tflops = f"{work / r['ms'] / 1e9:.0f}" if "matmul_tflops" in k else "-"   # CPU: no timing
            lines.append(f"| {r['kernel']} | {r['config']} | {r['table']} | {r['ms']:.3f} | {tflops} "
                         f"| {max(r['check'][x] for x in ('out', 'dq', 'dk', 'dv')):.2e} | {r['accurate']} |")
        if "matmul_tflops" in k:
            lines += ["", f"Ceilings measured in this run: dense bf16 matmul {k['matmul_tflops']:.0f} TF/s, device copy "
                      f"{k['copy_gbs']:.0f} GB/s. TF/s count causal FLOPs 4*B*H*T^2*D/2 for the forward and 2.5x that "
                      "for the backward (its 5 necessary products; ours does 7: the dq kernel recomputes QK^T and "
                      "dO V^T)."]
    lines += ["", "Full numbers: paper-scale.json (and paper-scale-eval.json for the scorer)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="qbench bench paper-scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for paper-scale.md / .json")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and models (CPU test of every step)")
    ap.add_argument("--eval-limit", default=None,
                    help="examples per task for eval and cell (default 1000; 'all' for every example; --tiny: 2)")
    ap.add_argument("--eval-size", default="340M", help=f"model size of the eval step: {' or '.join(EVAL_GOALS)} (default 340M)")
    ap.add_argument("--gptq-layers", type=int, default=2, help="blocks of the 1.8B model GPTQ runs on (default 2)")
    args = ap.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        ap.error(f"unknown steps {unknown}; expected a subset of {list(STEPS)}")
    setup = Setup(args.tiny, args.eval_limit, args.gptq_layers, args.out, args.eval_size)

    import triton

    t_start = time.time()
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "qbench bench paper-scale " + " ".join(sys.argv[1:] if argv is None else argv),
            "device": torch.cuda.get_device_name() if setup.cuda else f"CPU ({platform.processor() or platform.machine()}, "
                      f"{os.cpu_count()} cores; kernels in the Triton interpreter)",
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "steps": steps, "tiny": args.tiny}
    log("# " + json.dumps(info))
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for step in steps:
        log(f"{step} ...")
        t0 = time.time()
        results[step] = {}
        try:
            {"kernel": step_kernel, "gptq": step_gptq, "eval": step_eval, "cell": step_cell}[step](setup, results[step])
        except Exception as exc:  # noqa: BLE001 - one failing step must not lose the others' numbers
            traceback.print_exc()
            results[step].update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        results[step]["step_seconds"] = time.time() - t0
        if setup.cuda:
            torch.cuda.empty_cache()
        info["seconds"] = time.time() - t_start   # written after every step: a cut-off run keeps what it has
        (args.out / "paper-scale.json").write_text(json.dumps({"info": info, "results": results}, indent=1,
                                                              default=str))
    md = markdown(info, results)
    (args.out / "paper-scale.md").write_text(md)
    log(f"\nwrote {args.out / 'paper-scale.md'} and paper-scale.json\n")
    log("| measurement | value | goal |\n|---|---|---|")
    for row in summary_rows(results):
        log("| " + " | ".join(row) + " |")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    from qbench.cli import main as qbench

    sys.exit(qbench(["bench", "paper-scale", *sys.argv[1:]]))
