"""Per-item results of an evaluation: what lm-eval's process_results gave for every document, and
the aggregation that turns them into the stored metric.

The items of one task (the `tasks` mapping of the sidecar format, INTERFACES.md):

    {"doc_id": [0, 1, ...],
     "metrics": {"acc": {"aggregation": "mean", "values": [1.0, 0.0, ...]},
                 "perplexity": {"aggregation": "perplexity", "values": [-3.2, ...]},
                 "word_perplexity": {"aggregation": "weighted_perplexity",
                                     "values": [[-812.4, 153], ...]}}}

`values` are, per document in `doc_id` order, the very objects lm-eval's evaluator appended to the
lists it aggregates: `record_process_results` wraps each task's process_results for one run and
keeps what it returns (the dicts the evaluator reads its per-document values from, in its
order), so `aggregate` over them repeats lm-eval's own computation in lm-eval's own order: the
result equals the stored metric exactly. (lm-eval's `log_samples` holds the same objects, but
also re-renders every target and hashes every document: ~0.5 s per cell on the paper set; a test
shows both give the same items.) Importing this module imports neither lm-eval nor torch (the
report reads sidecars with it).
"""
from __future__ import annotations

import contextlib
import math

from .errors import EvalError

# lm-eval's aggregations of the per-document values (lm_eval.api.metrics), same operations in the
# same order: mean(arr) = sum(arr) / len(arr); weighted_mean(items) = sum(a) / sum(b)
AGGREGATIONS = ("mean", "perplexity", "weighted_perplexity", "bits_per_byte")


class ItemsError(EvalError):
    """Per-item results that are malformed (the message names the task / metric and the problem)."""


def _mean(values) -> float:
    return sum(values) / len(values)


def _weighted_mean(values) -> float:
    a, b = zip(*values)
    return sum(a) / sum(b)


def aggregate(metric_items: dict) -> float:
    """The metric from its per-document items ({"aggregation": name, "values": [...]}):
    mean: the mean; perplexity: exp(-mean log-likelihood); weighted_perplexity:
    exp(-sum ll / sum weight); bits_per_byte: -sum ll / sum bytes / ln 2."""
    name = metric_items.get("aggregation")
    values = metric_items.get("values")
    if name not in AGGREGATIONS:
        raise ItemsError(f"unknown aggregation {name!r}; known: {', '.join(AGGREGATIONS)}")
    if not values:
        raise ItemsError(f"no values to aggregate ({name})")
    if name == "mean":
        return _mean(values)
    if name == "perplexity":
        return math.exp(-_mean(values))
    if name == "weighted_perplexity":
        return math.exp(-_weighted_mean(values))
    return -_weighted_mean(values) / math.log(2)


def check_items(tasks: dict) -> None:
    """Raise ItemsError unless `tasks` has the sidecar layout: per task a doc_id list and, per
    metric, a known aggregation and one value per document (a [ll, weight] pair for weighted ones)."""
    if not isinstance(tasks, dict):
        raise ItemsError(f"per-item results must be a mapping of tasks, got {type(tasks).__name__}")
    for task, entry in tasks.items():
        doc_ids = entry.get("doc_id") if isinstance(entry, dict) else None
        if not isinstance(doc_ids, list) or not isinstance(entry.get("metrics"), dict):
            raise ItemsError(f"task {task!r}: needs a doc_id list and a metrics mapping")
        for metric, m in entry["metrics"].items():
            values = m.get("values") if isinstance(m, dict) else None
            if not isinstance(values, list) or len(values) != len(doc_ids):
                raise ItemsError(f"task {task!r}, metric {metric!r}: {len(values) if isinstance(values, list) else 'no'} "
                                 f"values for {len(doc_ids)} documents")
            if m.get("aggregation") not in AGGREGATIONS:
                raise ItemsError(f"task {task!r}, metric {metric!r}: unknown aggregation {m.get('aggregation')!r}")
            pairs = m["aggregation"] in ("weighted_perplexity", "bits_per_byte")
            if any((isinstance(v, list) and len(v) == 2) != pairs for v in values):
                raise ItemsError(f"task {task!r}, metric {metric!r}: values must be "
                                 f"{'[loglikelihood, weight] pairs' if pairs else 'numbers'}")


def _plain(value):
    """A per-document value as JSON data (tuples as lists, numpy scalars as Python numbers)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        return value.item()
    return value


def aggregation_names(task) -> dict[str, str]:
    """{metric: aggregation name} of an lm-eval task object (its registered aggregation functions)."""
    from lm_eval.api.registry import AGGREGATION_REGISTRY

    by_fn = {fn: name for name, fn in AGGREGATION_REGISTRY.items()}
    return {metric: by_fn.get(fn, getattr(fn, "__name__", str(fn))) for metric, fn in task.aggregation().items()}


@contextlib.contextmanager
def record_process_results(tasks: dict):
    """While active, every call of a task object's process_results is recorded: yields
    {task name: [returned dict, ...]} in call order (lm-eval's evaluator calls it once per filter
    and document, documents in doc_id order, and aggregates the values of the returned dicts)."""
    calls = {name: [] for name in tasks}
    for name, task in tasks.items():
        original = task.process_results

        def recorded(doc, results, _original=original, _out=calls[name]):
            out = _original(doc, results)
            _out.append(out)
            return out

        task.process_results = recorded
    try:
        yield calls
    finally:
        for task in tasks.values():
            vars(task).pop("process_results", None)


def task_items(task, calls: list[dict]) -> dict:
    """One task's sidecar entry from its recorded process_results calls (record_process_results)
    and the run's request instances (which say the documents and the filters)."""
    doc_ids = sorted({inst.doc_id for inst in task.instances})
    filters = list(task.instances[0].filtered_resps) if task.instances else []
    if len(calls) != len(doc_ids) * len(filters):
        raise ItemsError(f"task {task.config.task!r}: {len(calls)} process_results calls for {len(doc_ids)} "
                         f"documents and {len(filters)} filters")
    aggregations = aggregation_names(task)
    metrics = {}
    for k, filt in enumerate(filters):
        rows = calls[k * len(doc_ids):(k + 1) * len(doc_ids)]
        for metric in rows[0] if rows else ():
            key = metric if filt == "none" else f"{metric},{filt}"
            metrics[key] = {"aggregation": aggregations[metric], "values": [_plain(r[metric]) for r in rows]}
    return {"doc_id": [int(d) for d in doc_ids], "metrics": metrics}
