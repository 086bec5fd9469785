"""`evaluate(model, tokenizer, tasks)`: lm-eval's simple_evaluate on our task YAMLs, offline."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from .. import paths
from .errors import EvalError, TokenizerError
from .tasks import check_prepared, online_default, resolve_tasks, yaml_dir

DEFAULT_BOOTSTRAP_ITERS = 1000


@contextlib.contextmanager
def hub_mode(online: bool):
    """Offline: HF_DATASETS_OFFLINE=1, HF_HUB_OFFLINE=1 (also in already-imported datasets /
    huggingface_hub). Always: a writable HF_HOME under DATA_DIR unless HF_HOME is set."""
    env = {"HF_HOME": os.environ.get("HF_HOME") or str(paths.DATA_DIR / "hf_home")}
    if not online:
        env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    patched = []
    if not online:
        import datasets.config
        import huggingface_hub.constants

        for mod, attr in [(datasets.config, "HF_DATASETS_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE"),
                          (huggingface_hub.constants, "HF_HUB_OFFLINE")]:
            if hasattr(mod, attr):
                patched.append((mod, attr, getattr(mod, attr)))
                setattr(mod, attr, True)
    try:
        yield
    finally:
        for mod, attr, old in patched:
            setattr(mod, attr, old)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cache_jinja_templates() -> None:
    """lm-eval compiles a task's Jinja template anew for every document it renders (41k compiles,
    most of the non-model time of the paper set). Memoize the compilation: same environment, same
    template strings, so the rendered text is identical. Idempotent; patches lm_eval.utils."""
    import functools

    import lm_eval.utils as lm_utils

    if getattr(lm_utils.apply_template, "_qbench_cached", False):
        return
    compile_template = functools.lru_cache(maxsize=4096)(lm_utils.env.from_string)

    def apply_template(template: str, doc: dict) -> str:
        return compile_template(template).render(**doc)

    apply_template._qbench_cached = True
    lm_utils.apply_template = apply_template


def task_manager(online: bool, tasks_dir: Path | None = None):
    from lm_eval.tasks import TaskManager

    ydir = yaml_dir(tasks_dir)
    include = [str(ydir)] if ydir.is_dir() else None
    return TaskManager(include_path=include, include_defaults=online)


def make_lm(model, tokenizer, scorer: str = "qbench", batch_size=None, max_batch_tokens=None,
            max_length=None):
    """The lm-eval LM object: our fast scorer ("qbench") or lm-eval's stock HFLM ("hf")."""
    from .adapter import QBenchLM, check_tokenizer

    check_tokenizer(tokenizer)
    if scorer == "qbench":
        return QBenchLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                        max_batch_tokens=max_batch_tokens, max_length=max_length)
    if scorer == "hf":
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size or 32,
                    max_length=max_length)
    raise EvalError(f"unknown scorer {scorer!r}; valid: qbench, hf")


def to_metrics(results: dict) -> dict:
    """lm-eval's results -> {task: {metric: value, metric + "_stderr": value}} (filter "none"
    dropped from the keys; a stderr lm-eval could not compute is None)."""
    out = {}
    for task, res in results["results"].items():
        m = {}
        for key, value in res.items():
            if key == "alias" or "," not in key:
                continue
            metric, filt = key.split(",", 1)
            name = metric if filt == "none" else f"{metric},{filt}"
            m[name] = None if value in ("N/A", None) else float(value)
        out[task] = m
    return out


def evaluate(model, tokenizer, tasks="paper", limit=None, batch_size=None, device=None, *,
             online: bool | None = None, max_batch_tokens: int | None = None, max_length: int | None = None,
             scorer: str = "qbench", bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
             tasks_dir: Path | None = None, return_details: bool = False):
    """Score `model` (any HF causal LM object: ours, quantized, transformers') on lm-eval tasks.

    tasks: a task-set name ("paper", "quick"), a task name, or a list of them; offline (default)
        they are our `qb_*` tasks built by `qbench data prepare`, online (online=True or
        QBENCH_ONLINE=1) lm-eval's stock tasks (needs a dataset hub).
    limit: examples per task (None: all). batch_size: most rows per forward (None: only the token
        budget `max_batch_tokens` limits); for scorer="hf" the HFLM batch size (default 32).
    device: move the model there first (None: leave it where it is).
    bootstrap_iters: lm-eval's bootstrap draws for stderrs without a closed form (perplexity);
        accuracy stderrs are closed-form either way. 0 skips all stderrs.
    Returns {task: {metric: value, metric + "_stderr": value}}; with return_details also a dict
    (lm-eval's n-samples, versions and configs, seconds, scorer statistics).
    """
    online = online_default() if online is None else online
    if tokenizer is None or (getattr(tokenizer, "bos_token_id", None) is None
                             and getattr(tokenizer, "eos_token_id", None) is None):
        from .adapter import check_tokenizer
        check_tokenizer(tokenizer)   # raises TokenizerError with the explanation
    known = None
    if online:
        tm = task_manager(True, tasks_dir)
        known = tm.all_tasks
    names = resolve_tasks(tasks, online=online, known_online=known)
    check_prepared(names, tasks_dir)
    if device is not None:
        model = model.to(device)
    t0 = time.perf_counter()
    with hub_mode(online):
        import lm_eval
        from lm_eval.evaluator import simple_evaluate

        cache_jinja_templates()
        if not online:
            tm = task_manager(False, tasks_dir)
        with _quiet():
            lm = make_lm(model, tokenizer, scorer, batch_size, max_batch_tokens, max_length)
            scoring = _time_scoring(lm)
            try:
                results = simple_evaluate(model=lm, tasks=names, task_manager=tm, limit=limit,
                                          bootstrap_iters=bootstrap_iters, log_samples=False,
                                          verbosity=None)
            except ConnectionError as err:
                if not online:
                    raise
                raise EvalError(f"online evaluation needs a reachable dataset hub ({err}); without one, "
                                f"use the offline tasks (the default; `qbench data prepare` builds them)") from None
    seconds = time.perf_counter() - t0
    if results is None:
        raise EvalError("lm-eval returned no results")
    metrics = to_metrics(results)
    if not return_details:
        return metrics
    details = {"n_samples": results.get("n-samples"), "versions": results.get("versions"),
               "configs": {k: {kk: str(vv) for kk, vv in v.items() if kk in ("task", "dataset_kwargs",
                                                                             "test_split", "validation_split")}
                           for k, v in results.get("configs", {}).items()},
               "seconds": seconds, "scoring_seconds": scoring["seconds"], "scorer": scorer, "online": online, "tasks": names, "limit": limit,
               "lm_eval_version": getattr(lm_eval, "__version__", None),
               "scorer_stats": dict(getattr(lm, "stats", {}))}
    return metrics, details


def _time_scoring(lm) -> dict:
    """Accumulate the wall time spent in the LM's scoring methods (the rest is lm-eval's own work:
    building requests, metrics), synchronizing CUDA so that the time is the device's too."""
    import torch

    acc = {"seconds": 0.0}
    for name in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        method = getattr(lm, name)

        def timed(*args, _method=method, **kwargs):
            t = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                if torch.cuda.is_available() and torch.cuda.is_initialized():
                    torch.cuda.synchronize()
                acc["seconds"] += time.perf_counter() - t

        setattr(lm, name, timed)
    return acc


@contextlib.contextmanager
def _quiet():
    """lm-eval logs a warning per model object / task; keep the console for qbench's own output."""
    loggers = [logging.getLogger(n) for n in ("lm-eval", "lm_eval")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.ERROR) if os.environ.get("QBENCH_LM_EVAL_LOG") is None else lg.level)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


__all__ = ["evaluate", "make_lm", "to_metrics", "hub_mode", "task_manager", "TokenizerError"]
