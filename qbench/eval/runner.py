"""`evaluate(model, tokenizer, tasks)`: lm-eval's simple_evaluate on our task YAMLs, offline."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from .. import paths
from .errors import EvalError, TokenizerError
from .items import check_items, record_process_results, task_items
from .tasks import check_prepared, online_default, resolve_tasks, task_fingerprint, yaml_dir

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


# Built lm-eval objects, reused across evaluate() calls of one process: TaskManagers and
# task objects keyed by (tasks folder, online, task name, task fingerprint), so changed task data
# or YAML builds a new task. A task object holds its dataset and, after a run, that run's request
# instances; simple_evaluate rebuilds the instances on every run (build_all_requests) and only
# re-applies the same settings (num_fewshot 0, fewshot seed), which is why reuse is exact
# (tests/test_eval_items.py compares cached with fresh runs).
_TASKS: dict = {}


def task_manager(online: bool, tasks_dir: Path | None = None):
    """lm-eval's TaskManager on our task YAMLs (plus lm-eval's own tasks when online), one per
    process and folder (indexing lm-eval's task folder takes seconds)."""
    from lm_eval.tasks import TaskManager

    ydir = yaml_dir(tasks_dir)
    key = ("manager", str(ydir.resolve()), ydir.is_dir(), online)
    if key not in _TASKS:
        include = [str(ydir)] if ydir.is_dir() else None
        _TASKS[key] = TaskManager(include_path=include, include_defaults=online)
    return _TASKS[key]


def load_tasks(names: list[str], online: bool, tasks_dir: Path | None = None, reuse: bool = True) -> dict:
    """{name: lm-eval task object} for `names` (offline: our YAMLs; online: lm-eval's tasks). Call
    inside hub_mode. reuse=False builds fresh objects (and leaves the cache as it is)."""
    tm = task_manager(online, tasks_dir)
    folder = str(yaml_dir(tasks_dir).resolve())
    prints = task_fingerprint(names, tasks_dir)
    keys = {n: ("task", folder, online, n, prints[n]) for n in names}
    missing = [n for n in names if not reuse or keys[n] not in _TASKS]
    if missing:
        built = tm.load(missing)["tasks"]
        if reuse:
            for n in missing:
                for stale in [k for k in _TASKS if k[:4] == keys[n][:4]]:
                    del _TASKS[stale]
                _TASKS[keys[n]] = built[n]
    else:
        built = {}
    return {n: built[n] if n in built else _TASKS[keys[n]] for n in names}


def cache_run_metadata() -> None:
    """simple_evaluate adds environment metadata to every result (torch's collect_env runs about ten
    subprocesses, `git describe` one more: ~0.3-1 s per call, most of lm-eval's fixed cost per cell).
    Compute it once per process and working directory: the same values, so results are unchanged.
    Idempotent; patches lm_eval.evaluator's references."""
    import lm_eval.evaluator as ev

    if getattr(ev.add_env_info, "_qbench_cached", False):
        return
    env_info, git_hash = ev.add_env_info, ev.get_git_commit_hash
    memo: dict = {}

    def add_env_info(storage: dict) -> None:
        key = ("env", os.getcwd())
        if key not in memo:
            memo[key] = {}
            env_info(memo[key])
        storage.update(memo[key])

    def get_git_commit_hash():
        key = ("git", os.getcwd())
        if key not in memo:
            memo[key] = git_hash()
        return memo[key]

    add_env_info._qbench_cached = True
    ev.add_env_info, ev.get_git_commit_hash = add_env_info, get_git_commit_hash


def make_lm(model, tokenizer, scorer: str = "qbench", batch_size=None, max_batch_tokens=None,
            max_length=None, share_contexts: bool = True):
    """The lm-eval LM object: our fast scorer ("qbench"; share_contexts: see QBenchLM) or lm-eval's
    stock HFLM ("hf")."""
    from .adapter import QBenchLM, check_tokenizer

    check_tokenizer(tokenizer)
    if scorer == "qbench":
        return QBenchLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                        max_batch_tokens=max_batch_tokens, max_length=max_length, share_contexts=share_contexts)
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
             tasks_dir: Path | None = None, return_details: bool = False, return_items: bool = False,
             reuse_tasks: bool = True):
    """Score `model` (any HF causal LM object: ours, quantized, transformers') on lm-eval tasks.

    tasks: a task-set name ("paper", "extended", "quick"), a task name, or a list of them; offline
        (default) they are our `qb_*` tasks built by `qbench data prepare`, online (online=True or
        QBENCH_ONLINE=1) lm-eval's stock tasks (needs a dataset hub).
    limit: examples per task (None: all). batch_size: most rows per forward (None: only the token
        budget `max_batch_tokens` limits); for scorer="hf" the HFLM batch size (default 32).
    device: move the model there first (None: leave it where it is).
    bootstrap_iters: lm-eval's bootstrap draws for stderrs without a closed form (perplexity);
        accuracy stderrs are closed-form either way. 0 skips all stderrs.
    reuse_tasks: reuse lm-eval's task objects built by an earlier call of this process (same tasks
        folder and task fingerprint); False builds them afresh. The numbers are the same either way.
    Returns {task: {metric: value, metric + "_stderr": value}}; with return_details also a dict
    (lm-eval's n-samples, versions and configs, seconds and their split, scorer statistics); with
    return_items (metrics, details, items): items = per task the doc ids and, per metric, the
    aggregation and per-document values lm-eval's process_results gave (qbench.eval.items).
    """
    run = run_lm_eval(model, tokenizer, tasks, limit, batch_size, device, online=online,
                      max_batch_tokens=max_batch_tokens, max_length=max_length, scorer=scorer,
                      bootstrap_iters=bootstrap_iters, tasks_dir=tasks_dir, items=return_items,
                      reuse_tasks=reuse_tasks)
    results = run["results"]
    metrics = to_metrics(results)
    if not (return_details or return_items):
        return metrics
    timing = run["timing"]
    import lm_eval

    details = {"n_samples": results.get("n-samples"), "versions": results.get("versions"),
               "configs": {k: {kk: str(vv) for kk, vv in v.items() if kk in ("task", "dataset_kwargs",
                                                                             "test_split", "validation_split")}
                           for k, v in results.get("configs", {}).items()},
               "seconds": timing["total"], "scoring_seconds": timing["scoring"], "timing": timing,
               "scorer": scorer, "online": run["online"], "tasks": run["names"], "limit": limit,
               "lm_eval_version": getattr(lm_eval, "__version__", None),
               "scorer_stats": dict(getattr(run["lm"], "stats", {}))}
    if return_items:
        return metrics, details, run["items"]
    return metrics, details


def run_lm_eval(model, tokenizer, tasks="paper", limit=None, batch_size=None, device=None, *,
                online: bool | None = None, max_batch_tokens: int | None = None, max_length: int | None = None,
                scorer: str = "qbench", bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
                tasks_dir: Path | None = None, items: bool = False, log_samples: bool = False,
                reuse_tasks: bool = True, share_contexts: bool = True) -> dict:
    """One simple_evaluate run (see evaluate): {"results" (lm-eval's; with "samples" when
    log_samples), "items" (with items: the per-item results, qbench.eval.items), "tasks" (the task
    objects; their .instances hold this run's requests until the next run), "lm", "names",
    "online", "timing" (seconds: total, tasks = building / fetching task objects, lm = the LM
    wrapper, scoring = inside the LM's scoring methods, lm_eval = the rest of simple_evaluate:
    requests, metrics, bookkeeping; items = turning the recorded results into items)}."""
    t0 = time.perf_counter()
    online = online_default() if online is None else online
    if tokenizer is None or (getattr(tokenizer, "bos_token_id", None) is None
                             and getattr(tokenizer, "eos_token_id", None) is None):
        from .adapter import check_tokenizer
        check_tokenizer(tokenizer)   # raises TokenizerError with the explanation
    known = None
    if online:
        with hub_mode(True):
            known = task_manager(True, tasks_dir).all_tasks
    names = resolve_tasks(tasks, online=online, known_online=known)
    check_prepared(names, tasks_dir)
    if device is not None:
        model = model.to(device)
    timing = {}
    with hub_mode(online):
        import lm_eval  # noqa: F401
        from lm_eval.evaluator import simple_evaluate

        from . import bootstrap

        cache_jinja_templates()
        cache_run_metadata()
        bootstrap.install()
        with _quiet():
            t = time.perf_counter()
            try:
                task_objs = load_tasks(names, online, tasks_dir, reuse=reuse_tasks)
            except ConnectionError as err:
                if not online:
                    raise
                raise EvalError(f"online evaluation needs a reachable dataset hub ({err}); without one, "
                                f"use the offline tasks (the default; `qbench data prepare` builds them)") from None
            timing["tasks"] = time.perf_counter() - t
            t = time.perf_counter()
            lm = make_lm(model, tokenizer, scorer, batch_size, max_batch_tokens, max_length, share_contexts)
            timing["lm"] = time.perf_counter() - t
            scoring = _time_scoring(lm)
            t = time.perf_counter()
            with record_process_results(task_objs if items else {}) as calls:
                results = simple_evaluate(model=lm, tasks=[task_objs[n] for n in names],
                                          task_manager=task_manager(online, tasks_dir), limit=limit,
                                          bootstrap_iters=bootstrap_iters, log_samples=log_samples, verbosity=None)
            timing["lm_eval"] = time.perf_counter() - t - scoring["seconds"]
    if results is None:
        raise EvalError("lm-eval returned no results")
    t = time.perf_counter()
    per_item = {n: task_items(task_objs[n], calls[n]) for n in names} if items else None
    if per_item is not None:
        check_items(per_item)
    timing["items"] = time.perf_counter() - t
    timing["scoring"] = scoring["seconds"]
    timing["total"] = time.perf_counter() - t0
    return {"results": results, "items": per_item, "tasks": task_objs, "lm": lm, "names": names, "online": online,
            "timing": timing}


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


__all__ = ["evaluate", "run_lm_eval", "make_lm", "to_metrics", "hub_mode", "task_manager", "load_tasks",
           "TokenizerError"]
