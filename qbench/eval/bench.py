"""`qbench bench eval`: our scorer against lm-eval's stock HFLM on the same model and tasks.

Both run through the same `evaluate()` (same task YAMLs, same simple_evaluate settings,
bootstrap_iters=0 so that no bootstrap is timed); after a short warm-up of each (datasets
cached, CUDA initialised), each is timed once. Prints both times (end to end, and inside the
scorer's loglikelihood / loglikelihood_rolling calls), their ratios, the largest metric
difference (absolute for accuracies, relative for perplexities) and per task how many items'
answers differ from HFLM's; our scorer also runs once with plain rows only (no shared-context
rows), timed, to show what sharing the multiple-choice contexts gains.

`qbench bench eval --batch-check`: the scorer's noise floor. One model scored twice by our scorer
with two batch settings (default: a 4096-token budget with any number of rows, and 512 tokens with
one row per forward): per task, how many items change answer (multiple choice: the choice of
highest log-likelihood; LAMBADA: whether the continuation is the greedy one), how many change a
per-item metric value (acc, acc_norm), the largest change of a request's log-likelihood, and the
largest metric difference.

`qbench bench eval --overhead`: where one evaluate() call spends its time outside the model
(building tasks, the LM wrapper, lm-eval's requests / metrics / bookkeeping, per-item results),
over repeated calls in one process, with lm-eval's task objects reused (the default) and rebuilt.
"""
from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

from .. import paths


def _load(model_path, device, dtype):
    import torch

    from ..bench import models as bench_models
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

    from .runner import run_lm_eval, to_metrics

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_path = model_path or paths.BUNDLED_SOFTMAX
    model, tokenizer, content_hash = _load(model_path, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    log(f"model {model_path} ({params / 1e6:.1f}M parameters, {dtype}) on {device}; tasks {tasks}, limit {limit}")

    def run(scorer, lim, share=True):
        """(metrics, details, seconds end to end, answers per task: taken after the timing)"""
        kw = dict(batch_size=hf_batch_size) if scorer == "hf" else dict(batch_size=batch_size,
                                                                          max_batch_tokens=max_batch_tokens)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = run_lm_eval(model, tokenizer, tasks=tasks, limit=lim, scorer=scorer, bootstrap_iters=0,
                        share_contexts=share, **kw)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        details = {"scoring_seconds": r["timing"]["scoring"], "scorer_stats": dict(getattr(r["lm"], "stats", {})),
                   "tasks": r["names"], "n_samples": r["results"].get("n-samples")}
        return to_metrics(r["results"]), details, seconds, {n: answers(r["tasks"][n]) for n in r["names"]}

    for scorer in ("qbench", "hf"):   # warm-up: datasets into the cache, CUDA/kernels initialised
        run(scorer, 2)
    ours, ours_details, t_ours, ans_ours = run("qbench", limit)
    s_ours = ours_details["scoring_seconds"]
    log(f"qbench scorer  {t_ours:9.2f} s   (of which scoring {s_ours:.2f} s; {ours_details['scorer_stats']})")
    _, plain_details, t_plain, _ = run("qbench", limit, share=False)
    log(f"  plain rows   {t_plain:9.2f} s   (of which scoring {plain_details['scoring_seconds']:.2f} s; every "
        f"answer choice in a row of its own: {plain_details['scorer_stats']})")
    hf, hf_details, t_hf, ans_hf = run("hf", limit)
    s_hf = hf_details["scoring_seconds"]
    log(f"lm-eval HFLM   {t_hf:9.2f} s   (of which scoring {s_hf:.2f} s; batch_size {hf_batch_size})")
    worst, rows = compare_metrics(ours, hf)
    flips = {n: sum(ans_ours[n][d][0] != ans_hf[n][d][0] for d in ans_hf[n]) for n in ans_hf}
    log(f"speed-up       {t_hf / t_ours:9.2f} x end to end (simple_evaluate), {s_hf / s_ours:.2f} x in the scorer "
        f"alone (lm-eval's own work, the same for both: ~{t_ours - s_ours:.1f} s); shared-context rows "
        f"{t_plain / t_ours:.2f} x faster than plain rows")
    log(f"max metric difference {worst:.3g} (absolute for accuracies, relative for perplexities); items whose "
        f"answer differs from HFLM's: " + ", ".join(f"{n} {k} of {len(ans_hf[n])}" for n, k in flips.items()))
    log(f"{'task':22s} {'metric':16s} {'qbench':>14s} {'hflm':>14s} {'diff':>10s}")
    for task, metric, x, y, d in rows:
        log(f"{task:22s} {metric:16s} {x:14.6g} {y:14.6g} {d:10.2g}")
    result = {
        "model": str(model_path), "content_hash": content_hash, "parameters": params, "dtype": dtype,
        "device": device, "device_name": (torch.cuda.get_device_name(0) if device.startswith("cuda") else
                                          platform.processor() or platform.machine()),
        "tasks": ours_details["tasks"], "limit": limit, "n_samples": ours_details["n_samples"],
        "seconds": {"qbench": t_ours, "qbench_plain_rows": t_plain, "hf": t_hf}, "speedup": t_hf / t_ours,
        "shared_rows_speedup": t_plain / t_ours, "answer_flips_vs_hf": flips,
        "scoring_seconds": {"qbench": s_ours, "hf": s_hf}, "scoring_speedup": s_hf / s_ours,
        "hf_batch_size": hf_batch_size, "batch_size": batch_size,
        "max_batch_tokens": max_batch_tokens, "scorer_stats": ours_details["scorer_stats"],
        "max_metric_difference": worst, "metrics": {"qbench": ours, "hf": hf},
        "versions": _versions(torch),
    }
    _write(out, result, log)
    return result


def answers(task) -> dict[int, tuple]:
    """{doc_id: (answer, log-likelihoods of its requests)} from a task object's request instances
    after a run: the choice of highest log-likelihood (multiple choice), the greedy flag
    (loglikelihood), None (rolling perplexity)."""
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    out = {}
    for doc_id, insts in by_doc.items():
        resps = [next(iter(i.filtered_resps.values())) for i in sorted(insts, key=lambda i: i.idx)]
        lls = [float(r[0] if isinstance(r, (tuple, list)) else r) for r in resps]
        if task.OUTPUT_TYPE == "multiple_choice":
            answer = max(range(len(lls)), key=lls.__getitem__)
        elif task.OUTPUT_TYPE == "loglikelihood":
            answer = bool(resps[0][1])
        else:
            answer = None
        out[int(doc_id)] = (answer, lls)
    return out


def checked_run(model, tokenizer, tasks, limit, max_batch_tokens, batch_size, tasks_dir=None) -> dict:
    """A run_lm_eval run with per-item results and, per task, its answers (taken before a next run
    reuses the task objects)."""
    from .runner import run_lm_eval

    run = run_lm_eval(model, tokenizer, tasks, limit, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                      bootstrap_iters=0, tasks_dir=tasks_dir, items=True)
    run["answers"] = {n: answers(run["tasks"][n]) for n in run["names"]}
    run["output_types"] = {n: run["tasks"][n].OUTPUT_TYPE for n in run["names"]}
    return run


def batch_check_report(a: dict, b: dict) -> dict:
    """Compare two checked_run results of one model: per task the items, answer changes,
    per-metric value changes and the largest log-likelihood change (absolute and relative); and the
    largest metric difference (compare_metrics)."""
    from .errors import EvalError
    from .runner import to_metrics

    tasks = {}
    for name in a["names"]:
        kind = a["output_types"][name]
        ans_a, ans_b = a["answers"][name], b["answers"][name]
        if set(ans_a) != set(ans_b):
            raise EvalError(f"{name}: the two runs scored different documents")
        d_abs = d_rel = 0.0
        for doc in ans_a:
            for x, y in zip(ans_a[doc][1], ans_b[doc][1]):
                d_abs = max(d_abs, abs(x - y))
                d_rel = max(d_rel, abs(x - y) / max(abs(x), 1e-30))
        flips = {}
        for metric, m in a["items"][name]["metrics"].items():
            if m["aggregation"] == "mean":
                flips[metric] = sum(x != y for x, y in zip(m["values"], b["items"][name]["metrics"][metric]["values"]))
        tasks[name] = {"output_type": kind, "items": len(ans_a),
                       "answer_changes": (None if kind == "loglikelihood_rolling"
                                          else sum(ans_a[d][0] != ans_b[d][0] for d in ans_a)),
                       "metric_value_changes": flips, "max_abs_loglikelihood_change": d_abs,
                       "max_rel_loglikelihood_change": d_rel}
    worst, rows = compare_metrics(to_metrics(a["results"]), to_metrics(b["results"]))
    return {"tasks": tasks, "max_metric_difference": worst,
            "metric_differences": [{"task": t, "metric": m, "a": x, "b": y, "difference": d} for t, m, x, y, d in rows]}


def bench_batch_check(model_path=None, tasks="paper", limit=None, device=None, dtype="float32",
                      settings=((4096, None), (512, 1)), out=None, log=print) -> dict:
    """Score one model with two batch settings ((max_batch_tokens, batch_size) each) and report how
    much the numbers move (batch_check_report): the noise floor of the scorer."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_path = model_path or paths.BUNDLED_SOFTMAX
    model, tokenizer, content_hash = _load(model_path, device, dtype)
    log(f"model {model_path} ({dtype}) on {device}; tasks {tasks}, limit {limit}")
    runs = []
    for mbt, bs in settings:
        t = time.perf_counter()
        runs.append(checked_run(model, tokenizer, tasks, limit, mbt, bs))
        log(f"  max_batch_tokens {mbt}, batch_size {bs}: {time.perf_counter() - t:.1f} s, "
            f"{runs[-1]['lm'].stats['forwards']} forwards")
    report = batch_check_report(*runs)
    log(f"{'task':20s} {'items':>6s} {'answers changed':>16s} {'metric values changed':>24s} {'max |d ll|':>11s}")
    for name, r in report["tasks"].items():
        flips = ", ".join(f"{m} {n}" for m, n in r["metric_value_changes"].items()) or "-"
        changed = "-" if r["answer_changes"] is None else str(r["answer_changes"])
        log(f"{name:20s} {r['items']:6d} {changed:>16s} {flips:>24s} {r['max_abs_loglikelihood_change']:11.3g}")
    log(f"largest metric difference {report['max_metric_difference']:.3g} "
        f"(absolute for accuracies, relative for perplexities)")
    result = {"model": str(model_path), "content_hash": content_hash, "dtype": dtype, "device": device,
              "task_names": runs[0]["names"], "limit": limit,
              "settings": [{"max_batch_tokens": m, "batch_size": b} for m, b in settings],
              **report, "versions": _versions(torch)}
    _write(out, result, log)
    return result


def bench_overhead(model_path=None, tasks="paper", limit=None, device=None, dtype="float32", calls=3,
                   out=None, log=print) -> dict:
    """Median split (seconds) of evaluate() calls after a first one, with task objects reused
    (the default) and rebuilt, and with per-item results on."""
    import statistics

    import torch

    from .runner import evaluate

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_path = model_path or paths.BUNDLED_SOFTMAX
    model, tokenizer, content_hash = _load(model_path, device, dtype)
    log(f"model {model_path} ({dtype}) on {device}; tasks {tasks}, limit {limit}; {calls} calls after a first one")
    evaluate(model, tokenizer, tasks, limit=limit)
    modes = {"reused tasks": dict(), "rebuilt tasks": dict(reuse_tasks=False),
             "reused tasks + items": dict(return_items=True)}
    split = {}
    for mode, kw in modes.items():
        rows = [evaluate(model, tokenizer, tasks, limit=limit, return_details=True, **kw)[1]["timing"]
                for _ in range(calls)]
        for r in rows:
            r["outside_model"] = r["total"] - r["scoring"]
        split[mode] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    log(f"{'':22s} " + " ".join(f"{k:>10s}" for k in ("total", "scoring", "outside", "tasks", "lm", "lm_eval", "items")))
    for mode, t in split.items():
        log(f"{mode:22s} " + " ".join(f"{t[k]:10.3f}" for k in ("total", "scoring", "outside_model", "tasks", "lm",
                                                                   "lm_eval", "items")))
    result = {"model": str(model_path), "content_hash": content_hash, "dtype": dtype, "device": device,
              "tasks": tasks, "limit": limit, "calls": calls, "median_seconds": split, "versions": _versions(torch)}
    _write(out, result, log)
    return result


def _versions(torch) -> dict:
    import lm_eval

    return {"torch": torch.__version__, "lm_eval": getattr(lm_eval, "__version__", None),
            "transformers": __import__("transformers").__version__, "python": platform.python_version()}


def _write(out, result: dict, log) -> None:
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        log(f"written {out}")
