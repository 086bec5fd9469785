"""`qbench bench eval`: our scorer against lm-eval's stock HFLM on the same model and tasks.

Both run through the same `evaluate()` (same task YAMLs, same simple_evaluate settings,
bootstrap_iters=0 so that no bootstrap is timed); after a short warm-up of each (datasets
cached, CUDA initialised), each is timed once. Prints both times (end to end, and inside the
scorer's loglikelihood / loglikelihood_rolling calls), their ratios, and the largest metric
difference (absolute for accuracies, relative for perplexities).
"""
from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path

from .. import paths


def _load(model_path, device, dtype):
    import torch

    from .. import bench_models
    from ..model import load_checkpoint

    if bench_models.parse_spec(model_path):   # random:SIZE[:ATTENTION], a random model built in memory
        return bench_models.load_spec(model_path, device, getattr(torch, dtype))
    ckpt = load_checkpoint(model_path, device=device, dtype=getattr(torch, dtype))
    return ckpt.model, ckpt.tokenizer, getattr(ckpt, "content_hash", None)


def compare_metrics(a: dict, b: dict) -> tuple[float, list[tuple]]:
    """Largest difference between two metric dicts: relative for perplexities, absolute otherwise.
    Returns (max difference, rows (task, metric, a, b, difference))."""
    rows, worst = [], 0.0
    for task in sorted(set(a) | set(b)):
        for metric in sorted(set(a.get(task, {})) | set(b.get(task, {}))):
            if metric.endswith("_stderr"):
                continue
            x, y = a.get(task, {}).get(metric), b.get(task, {}).get(metric)
            if x is None or y is None:
                d = math.inf
            elif "perplexity" in metric:
                d = abs(x - y) / max(abs(y), 1e-12)
            else:
                d = abs(x - y)
            rows.append((task, metric, x, y, d))
            worst = max(worst, d)
    return worst, rows


def bench_eval(model_path=None, tasks="paper", limit=None, device=None, dtype="float32", hf_batch_size=32,
               batch_size=None, max_batch_tokens=None, out=None, log=print) -> dict:
    import torch

    from .runner import evaluate

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_path = model_path or paths.BUNDLED_SOFTMAX
    model, tokenizer, content_hash = _load(model_path, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    log(f"model {model_path} ({params / 1e6:.1f}M parameters, {dtype}) on {device}; tasks {tasks}, limit {limit}")

    def run(scorer, lim):
        kw = dict(batch_size=hf_batch_size) if scorer == "hf" else dict(batch_size=batch_size,
                                                                          max_batch_tokens=max_batch_tokens)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        metrics, details = evaluate(model, tokenizer, tasks=tasks, limit=lim, scorer=scorer, bootstrap_iters=0,
                                    return_details=True, **kw)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return metrics, details, time.perf_counter() - t0

    for scorer in ("qbench", "hf"):   # warm-up: datasets into the cache, CUDA/kernels initialised
        run(scorer, 2)
    ours, ours_details, t_ours = run("qbench", limit)
    s_ours = ours_details["scoring_seconds"]
    log(f"qbench scorer  {t_ours:9.2f} s   (of which scoring {s_ours:.2f} s; {ours_details['scorer_stats']})")
    hf, hf_details, t_hf = run("hf", limit)
    s_hf = hf_details["scoring_seconds"]
    log(f"lm-eval HFLM   {t_hf:9.2f} s   (of which scoring {s_hf:.2f} s; batch_size {hf_batch_size})")
    worst, rows = compare_metrics(ours, hf)
    log(f"speed-up       {t_hf / t_ours:9.2f} x end to end (simple_evaluate), {s_hf / s_ours:.2f} x in the scorer "
        f"alone (lm-eval's own work, the same for both: ~{t_ours - s_ours:.1f} s)")
    log(f"max metric difference {worst:.3g} (absolute for accuracies, relative for perplexities)")
    log(f"{'task':22s} {'metric':16s} {'qbench':>14s} {'hflm':>14s} {'diff':>10s}")
    for task, metric, x, y, d in rows:
        log(f"{task:22s} {metric:16s} {x:14.6g} {y:14.6g} {d:10.2g}")
    result = {
        "model": str(model_path), "content_hash": content_hash, "parameters": params, "dtype": dtype,
        "device": device, "device_name": (torch.cuda.get_device_name(0) if device.startswith("cuda") else
                                          platform.processor() or platform.machine()),
        "tasks": ours_details["tasks"], "limit": limit, "n_samples": ours_details["n_samples"],
        "seconds": {"qbench": t_ours, "hf": t_hf}, "speedup": t_hf / t_ours,
        "scoring_seconds": {"qbench": s_ours, "hf": s_hf}, "scoring_speedup": s_hf / s_ours,
        "hf_batch_size": hf_batch_size, "batch_size": batch_size,
        "max_batch_tokens": max_batch_tokens, "scorer_stats": ours_details["scorer_stats"],
        "max_metric_difference": worst, "metrics": {"qbench": ours, "hf": hf},
        "versions": {"torch": torch.__version__, "lm_eval": ours_details["lm_eval_version"],
                     "transformers": __import__("transformers").__version__, "python": platform.python_version()},
    }
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        log(f"written {out}")
    return result


def cmd_bench_eval(args) -> int:
    from .errors import EvalError

    try:
        bench_eval(model_path=args.model, tasks=args.tasks, limit=args.limit, device=args.device, dtype=args.dtype,
                   hf_batch_size=args.hf_batch_size, batch_size=args.batch_size,
                   max_batch_tokens=args.max_batch_tokens, out=args.out)
    except EvalError as err:
        print(f"qbench: error: {err}", file=sys.stderr)
        return 2
    return 0


def register_bench_commands(bench_subparsers) -> None:
    """Adds `eval` to the `qbench bench` subcommands."""
    p = bench_subparsers.add_parser("eval", help="time our lm-eval scorer against lm-eval's stock HFLM",
                                    description=__doc__)
    p.add_argument("--model", default=None, help=f"checkpoint folder (default {paths.BUNDLED_SOFTMAX}), or "
                                                  "random:SIZE[:ATTENTION] for a random model at a paper size "
                                                  "(random:340M, random:1.8B:softpick; qbench/bench_models.py)")
    p.add_argument("--tasks", default="paper", help="task set or comma-separated tasks (default paper)")
    p.add_argument("--limit", type=int, default=None, help="examples per task (default all)")
    p.add_argument("--device", default=None, help="cuda or cpu (default cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--hf-batch-size", type=int, default=32, help="batch size of the stock HFLM (default 32)")
    p.add_argument("--batch-size", type=int, default=None, help="most rows per forward of ours (default: no cap)")
    p.add_argument("--max-batch-tokens", type=int, default=None,
                   help="token budget per forward of ours (default 32768 on CUDA, 4096 on CPU)")
    p.add_argument("--out", default=None, help="also write the result as JSON here (e.g. results/bench/eval-h200.json)")
    p.set_defaults(func=cmd_bench_eval)
