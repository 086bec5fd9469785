"""Reading stored cells into a grid, and what tables and plots need to know about metrics.

The grid of a results folder is the one `sweep.json` (written by `qbench sweep`) lists; each of
its cells is looked up in `cells/<key>.json` and is then done, failed, or missing. Without a
manifest (cells copied in by hand) the grid is every stored cell, grouped by (model, recipe,
bits), a done cell preferred over a failed one and the newest among equals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..sweep.store import Store

KINDS = ("softmax", "softpick")
FP = "fp"          # recipe name of the full-precision baselines
MISSING = "—"
FAILED = "failed"

# lm-eval task -> short label; the eval module's TASK_INFO is used where it knows the task
_FALLBACK_LABELS = {"arc_easy": "ARC-e", "lambada_openai": "LAMBADA", "piqa": "PIQA", "sciq": "SciQ",
                    "wikitext": "Wikitext"}
_METRIC_LABELS = {"perplexity": "ppl", "word_perplexity": "word ppl", "byte_perplexity": "byte ppl",
                  "bits_per_byte": "bits/byte"}


def _task_info(task: str):
    try:
        from ..eval.tasks import TASK_INFO
    except Exception:  # pragma: no cover - the eval area is part of qbench
        return None
    return TASK_INFO.get(task)


def task_label(task: str) -> str:
    info = _task_info(task)
    return info.label if info is not None else _FALLBACK_LABELS.get(task, task)


def metric_label(task: str, metric: str) -> str:
    return f"{task_label(task)} {_METRIC_LABELS.get(metric, metric)}"


def lower_is_better(metric: str) -> bool:
    return "perplexity" in metric or metric in ("bits_per_byte", "loss")


def is_accuracy(metric: str) -> bool:
    return not lower_is_better(metric)


def task_metrics(task: str, values: dict | None = None) -> list[str]:
    """The metrics reported for a task: the paper's (eval's TASK_INFO), else every metric present."""
    info = _task_info(task)
    if info is not None:
        return list(info.metrics)
    return sorted(m for m in (values or {}) if not m.endswith("_stderr"))


def as_float(v) -> float | None:
    """A stored metric value as a float (the store writes non-finite numbers as strings)."""
    if v is None:
        return None
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return float(v)


def format_value(metric: str, v, stderr=None) -> str:
    """Accuracies in percent (as the paper), perplexities as they are; two decimals."""
    v = as_float(v)
    if v is None:
        return MISSING
    if is_accuracy(metric):
        v *= 100
    text = f"{v:.2f}" if math.isfinite(v) else ("inf" if v > 0 else ("-inf" if v < 0 else "nan"))
    se = as_float(stderr)
    if se is not None and math.isfinite(se):
        text += f" ± {se * (100 if is_accuracy(metric) else 1):.2f}"
    return text


@dataclass
class Entry:
    """One (model, recipe, bits) position of the grid and what the store holds for it."""
    kind: str
    recipe: str
    bits: int | None
    key: str | None = None
    record: dict | None = None

    @property
    def status(self) -> str:
        return "missing" if self.record is None else self.record["status"]

    def value(self, task: str, metric: str) -> tuple[float | None, float | None]:
        """(value, stderr) of a done cell; (None, None) otherwise."""
        if self.status != "done":
            return None, None
        values = (self.record.get("metrics") or {}).get(task) or {}
        return as_float(values.get(metric)), as_float(values.get(f"{metric}_stderr"))


@dataclass
class Grid:
    root: Path
    name: str
    tasks: list[str]
    limit: int | None
    limit_note: str
    device: str | None
    recipes: list[dict]                     # [{name, method, bits, activation, description}] in sweep order
    entries: dict = field(default_factory=dict)   # (kind, recipe, bits) -> Entry
    from_manifest: bool = True
    calib_note: str = ""

    def entry(self, kind: str, recipe: str, bits: int | None) -> Entry:
        return self.entries.get((kind, recipe, bits)) or Entry(kind, recipe, bits)

    def baseline(self, kind: str) -> Entry:
        return self.entry(kind, FP, None)

    def rows(self) -> list[tuple[str, str]]:
        """(task, metric) rows in task order."""
        out = []
        for task in self.tasks:
            values = {}
            for e in self.entries.values():
                if e.status == "done":
                    values.update((e.record.get("metrics") or {}).get(task) or {})
            out.extend((task, m) for m in task_metrics(task, values))
        return out

    def caption(self) -> str:
        limit = f"Evaluated on {self.limit_note or 'all examples of every task (no limit)'}."
        calib = f" Calibrating recipes used {self.calib_note}." if self.calib_note else ""
        return f"Sweep `{self.name}`" + (f" on {self.device}" if self.device else "") + f". {limit}{calib}"


def _newest(a: dict, b: dict) -> dict:
    rank = lambda r: (r["status"] == "done", r.get("finished_at") or "")  # noqa: E731
    return a if rank(a) >= rank(b) else b


def load_grid(root) -> Grid:
    """The grid of a results folder (see the module docstring). Raises FileNotFoundError when
    the folder has neither a manifest nor cells."""
    root = Path(root)
    store = Store(root)
    manifest = store.read_manifest()
    if manifest is not None:
        grid = Grid(root=root, name=manifest.get("name", root.name), tasks=list(manifest.get("tasks", [])),
                    limit=manifest.get("limit"), limit_note=manifest.get("limit_note") or "",
                    device=manifest.get("device"), recipes=list(manifest.get("recipes", [])),
                    calib_note=manifest.get("calib_note") or "")
        for cell in manifest.get("cells", []):
            recipe = cell["recipe"] or FP
            e = Entry(cell["model"], recipe, cell.get("bits"), cell["key"], store.read(cell["key"]))
            grid.entries[(e.kind, e.recipe, e.bits)] = e
        return grid
    records = store.records()
    if not records:
        raise FileNotFoundError(f"{root}: no sweep.json and no cells in {store.cells_dir}")
    chosen: dict = {}
    recipes: dict = {}
    tasks: list[str] = []
    limits = set()
    for r in sorted(records.values(), key=lambda r: r.get("finished_at") or ""):
        recipe = FP if r["recipe"] is None else r["recipe"]["name"]
        pos = (r["model"]["kind"], recipe, r.get("bits"))
        chosen[pos] = _newest(chosen[pos], r) if pos in chosen else r
        if r["recipe"] is not None:
            info = recipes.setdefault(recipe, {"name": recipe, "method": r["recipe"]["method"], "bits": [],
                                               "activation": r["recipe"].get("activation"),
                                               "calib": r["recipe"].get("calib"), "description": ""})
            if r["bits"] not in info["bits"]:
                info["bits"].append(r["bits"])
        tasks.extend(t for t in r.get("tasks", []) if t not in tasks)
        limits.add(r.get("limit"))
    if len(limits) == 1:
        limit = next(iter(limits))
        note = f"at most {limit} examples per task" if limit is not None else ""
    else:
        limit = None
        note = "cells with different limits: " + ", ".join(
            "none" if x is None else f"{x} examples per task" for x in sorted(limits, key=str))
    grid = Grid(root=root, name=root.name, tasks=tasks, limit=limit,
                limit_note=note, device=None, recipes=list(recipes.values()), from_manifest=False)
    for info in grid.recipes:
        info["bits"].sort()
    for (kind, recipe, bits), r in chosen.items():
        grid.entries[(kind, recipe, bits)] = Entry(kind, recipe, bits, r["key"], r)
    return grid
