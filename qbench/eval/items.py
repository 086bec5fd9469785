"""Per-item results of an evaluation: what lm-eval's process_results gave for every document, and
the aggregation that turns them into the stored metric.

The items of one task (the `tasks` mapping of the sidecar format, INTERFACES.md):

    {"doc_id": [0, 1, ...],
     "metrics": {"acc": {"aggregation": "mean", "values": [1.0, 0.0, ...]},
                 "perplexity": {"aggregation": "perplexity", "values": [-3.2, ...]},
                 "word_perplexity": {"aggregation": "weighted_perplexity",
                                     "values": [[-812.4, 153], ...]}}}

`values` are, per document in `doc_id` order, the very objects lm-eval's evaluator appended to the
lists it aggregates (its logged samples hold the same objects), so `aggregate` over them repeats
lm-eval's own computation in lm-eval's own order: the result equals the stored metric exactly.
This module imports neither lm-eval nor torch (the report reads sidecars with it).
"""
from __future__ import annotations

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


def items_from_samples(samples: dict, tasks: dict) -> dict:
    """lm-eval's logged samples ({task: [sample, ...]}, simple_evaluate(log_samples=True)) and task
    objects -> the sidecar's tasks mapping. Metric names as in the metrics dict (filter "none"
    dropped, other filters kept as "metric,filter")."""
    out = {}
    for name, rows in samples.items():
        aggregations = aggregation_names(tasks[name])
        by_filter: dict[str, list] = {}
        for row in rows:
            by_filter.setdefault(row["filter"], []).append(row)
        doc_ids, metrics = None, {}
        for filt, frows in by_filter.items():
            frows = sorted(frows, key=lambda r: r["doc_id"])
            ids = [int(r["doc_id"]) for r in frows]
            if doc_ids is None:
                doc_ids = ids
            elif ids != doc_ids:
                raise ItemsError(f"task {name!r}: filter {filt!r} scored other documents than the first filter")
            for metric in frows[0]["metrics"]:
                key = metric if filt == "none" else f"{metric},{filt}"
                metrics[key] = {"aggregation": aggregations[metric], "values": [_plain(r[metric]) for r in frows]}
        out[name] = {"doc_id": doc_ids or [], "metrics": metrics}
    check_items(out)
    return out
