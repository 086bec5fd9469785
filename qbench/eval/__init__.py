"""lm-eval integration: task sets (the paper's tasks offline and online), data preparation,
a fast exact scorer, and one entry point:

    from qbench.eval import evaluate
    metrics = evaluate(model, tokenizer, tasks="paper", limit=None)
    # {"qb_arc_easy": {"acc": ..., "acc_stderr": ..., "acc_norm": ..., ...}, ...}
    metrics, details, items = evaluate(model, tokenizer, tasks="paper", return_items=True)
    # items: per task doc ids and per-document metric values; qbench.eval.aggregate(metric items)
    # gives the metric back

Submodules are imported lazily (lm-eval and torch are heavy; `qbench data prepare` needs neither).
"""
from .errors import EvalError, TaskDataError, TokenizerError, UnknownTaskError

_LAZY = {
    "evaluate": "runner", "run_lm_eval": "runner", "make_lm": "runner", "to_metrics": "runner",
    "aggregate": "items", "check_items": "items", "ItemsError": "items",
    "QBenchLM": "adapter", "check_tokenizer": "adapter",
    "TASK_SETS": "tasks", "TASK_INFO": "tasks", "OFFLINE_TASKS": "tasks", "ONLINE_TASKS": "tasks",
    "resolve_tasks": "tasks", "check_prepared": "tasks", "task_fingerprint": "tasks",
    "prepare": "data",
}


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EvalError", "TaskDataError", "TokenizerError", "UnknownTaskError", *_LAZY]
