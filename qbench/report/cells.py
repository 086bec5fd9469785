"""Reading stored cells into a grid, and what tables and plots need to know about metrics.

A results folder holds one or more sweeps: manifests `sweeps/<name>.json` (and the legacy
`sweep.json`), each listing its cells. The grid of a sweep is its manifest's cells, each looked
up in `cells/<key>.json` with its per-item sidecar, and grouped by position (arm, recipe, column
label): one cell per calibration seed. Without any manifest (cells copied in by hand) the grid
is every stored cell, a done cell preferred over a failed one and the newest among equals.

Damage is never hidden: a cell file or sidecar that cannot be read, or a done record without the
metrics of its tasks, is a problem named by file; `load_grid` raises ReportError listing every
problem unless `allow_incomplete` (then damaged cells show as "corrupt" and the caption says so).
Old stores (manifest `pair`, records with `model.kind`, no `label`, no sidecars) read the same way.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QBenchError
from ..sweep.store import LEGACY_MANIFEST, SWEEPS, CorruptCell, Store

FP = "fp"          # recipe name of the full-precision baselines
FP_LABEL = "FP"
MISSING = "—"
FAILED = "failed"
CORRUPT = "corrupt"

# lm-eval task -> short label; the eval module's TASK_INFO is used where it knows the task
_FALLBACK_LABELS = {"arc_easy": "ARC-e", "lambada_openai": "LAMBADA", "piqa": "PIQA", "sciq": "SciQ",
                    "wikitext": "Wikitext"}
_METRIC_LABELS = {"perplexity": "ppl", "word_perplexity": "word ppl", "byte_perplexity": "byte ppl",
                  "bits_per_byte": "bits/byte"}


class ReportError(QBenchError):
    """A results folder cannot be rendered: not a folder, no or a corrupt manifest, damaged cells."""


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


def bits_label(recipe: dict | None, bits: int | None) -> str:
    """The column label of records without one (old stores): FP, 4-bit, W4A8."""
    if bits is None:
        return FP_LABEL
    act = recipe.get("activation") if recipe else None
    if act:
        return f"W{bits}A{act.get('bits') or act.get('dtype')}"
    return f"{bits}-bit"


# ----------------------------------------------------------------------------- cells and positions
@dataclass
class Arm:
    name: str
    attention: str
    label: str


@dataclass
class Cell:
    """One stored cell (one calibration seed of a grid position)."""
    key: str
    calib_seed: int | None
    record: dict | None = None       # None: missing, or damaged (problem says why)
    items: dict | None = None        # the sidecar's `tasks` mapping; None without (or a damaged) one
    problem: str | None = None

    @property
    def status(self) -> str:
        if self.record is None:
            return CORRUPT if self.problem else "missing"
        return self.record["status"]

    def value(self, task: str, metric: str) -> tuple[float | None, float | None]:
        values = (self.record.get("metrics") or {}).get(task) or {}
        return as_float(values.get(metric)), as_float(values.get(f"{metric}_stderr"))


@dataclass
class Entry:
    """One (arm, recipe, label) position of the grid: one cell per calibration seed."""
    arm: str
    recipe: str
    label: str
    bits: int | None
    cells: list[Cell] = field(default_factory=list)

    @property
    def status(self) -> str:
        """done only when every seed's cell is; else the worst: corrupt, failed, missing."""
        statuses = {c.status for c in self.cells} or {"missing"}
        for s in (CORRUPT, FAILED, "missing"):
            if s in statuses:
                return s
        return "done"

    @property
    def seeded(self) -> bool:
        return any(c.calib_seed is not None for c in self.cells)

    def value(self, task: str, metric: str) -> tuple[float | None, float | None]:
        """(value, stderr) of a done position, the mean over calibration seeds (stderr of the mean
        of independent estimates); (None, None) otherwise."""
        if self.status != "done":
            return None, None
        vals = [c.value(task, metric) for c in self.cells]
        if len(vals) == 1:
            return vals[0]
        if any(v is None for v, _ in vals):
            return None, None
        mean = sum(v for v, _ in vals) / len(vals)
        se = None if any(s is None for _, s in vals) else math.sqrt(sum(s * s for _, s in vals)) / len(vals)
        return mean, se

    def seed_sd(self, task: str, metric: str) -> float | None:
        """Standard deviation (n-1) of the value over calibration seeds; None with fewer than two."""
        vals = [c.value(task, metric)[0] for c in self.cells] if self.status == "done" else []
        if len(vals) < 2 or any(v is None or not math.isfinite(v) for v in vals):
            return None
        mean = sum(vals) / len(vals)
        return math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


@dataclass
class Grid:
    root: Path
    name: str
    tasks: list[str]
    limit: int | None
    limit_note: str
    device: str | None
    recipes: list[dict]                     # [{name, method, bits, activation, calib, description}] in sweep order
    arms: list[Arm]
    baseline: str
    compare: str = "arms"                   # "arms" | "models" (deltas only against each arm's own FP)
    entries: dict = field(default_factory=dict)   # (arm, recipe, label) -> Entry
    manifest: Path | None = None            # None: grid taken from the stored cells
    calib_note: str = ""
    problems: list[tuple[Path, str]] = field(default_factory=list)   # damaged files: (path, message)

    @property
    def from_manifest(self) -> bool:
        return self.manifest is not None

    @property
    def out_name(self) -> str | None:
        """Sub-folder of tables/ and plots/: the sweep's name for `sweeps/<name>.json` manifests."""
        return self.name if self.manifest is not None and self.manifest.parent.name == SWEEPS else None

    def out_dir(self, kind: str) -> Path:
        return self.root / kind / self.out_name if self.out_name else self.root / kind

    @property
    def others(self) -> list[str]:
        """The arms compared with the baseline arm (none when the sweep compares models)."""
        return [] if self.compare == "models" else [a.name for a in self.arms if a.name != self.baseline]

    def arm_label(self, name: str) -> str:
        return next((a.label for a in self.arms if a.name == name), name)

    def entry(self, arm: str, recipe: str, label: str) -> Entry:
        return self.entries.get((arm, recipe, label)) or Entry(arm, recipe, label, None)

    def fp(self, arm: str) -> Entry:
        return self.entry(arm, FP, FP_LABEL)

    def columns(self, recipe: str) -> list[tuple[str, int | None]]:
        """(label, bits) of a recipe's quantized positions: by width, then in sweep order."""
        seen: dict = {}
        for (_, r, label), e in self.entries.items():
            if r == recipe and label not in seen:
                seen[label] = (e.bits if e.bits is not None else math.inf, len(seen))
        return [(label, None if bits == math.inf else bits) for label, (bits, _) in sorted(seen.items(), key=lambda kv: kv[1])]

    def widths(self) -> list[int | None]:
        """The weight widths of the grid's points, ascending; None (last) for points that quantize no
        weights (KV cache, attention maps)."""
        found = {b for r in self.recipes for _, b in self.columns(r["name"])}
        return sorted(b for b in found if b is not None) + ([None] if None in found else [])

    def rows(self) -> list[tuple[str, str]]:
        """(task, metric) rows in task order."""
        out = []
        for task in self.tasks:
            values = {}
            for e in self.entries.values():
                if e.status == "done":
                    for c in e.cells:
                        values.update((c.record.get("metrics") or {}).get(task) or {})
            out.extend((task, m) for m in task_metrics(task, values))
        return out

    def caption(self) -> str:
        limit = f"Evaluated on {self.limit_note or 'all examples of every task (no limit)'}."
        calib = f" Calibrating recipes used {self.calib_note}." if self.calib_note else ""
        damage = ""
        if self.problems:
            names = ", ".join(str(p.relative_to(self.root)) if p.is_relative_to(self.root) else str(p)
                              for p, _ in self.problems)
            damage = (f" Rendered with --allow-incomplete despite {len(self.problems)} damaged file(s) ({names}): "
                      f"{CORRUPT} = a damaged cell file; a cell whose per-item sidecar is damaged is compared "
                      f"without per-item results.")
        return f"Sweep `{self.name}`" + (f" on {self.device}" if self.device else "") + f". {limit}{calib}{damage}"


# ----------------------------------------------------------------------------- reading
def _cell(store: Store, key: str, seed, problems: list) -> Cell:
    cell = Cell(key, seed)
    try:
        record = store.read(key)
    except CorruptCell as err:
        problems.append((store.path(key), str(err)))
        cell.problem = str(err)
        return cell
    if record is None:
        return cell
    cell.record = record
    try:
        cell.items = store.read_items(record)
    except CorruptCell as err:
        problems.append((store.cells_dir / record["items"]["file"], str(err)))
        cell.items = None
    return cell


def _arm_of(model) -> str:
    """The arm of a manifest cell (`arm`; old: `model` = kind) or record (`model.arm`; old `model.kind`)."""
    if isinstance(model, dict):
        return model.get("arm") or model.get("kind")
    return model


def _recipe_of(name) -> str:
    return FP if name in (None, FP) else name


def load_grid(root, sweep: str | None = None, allow_incomplete: bool = False) -> Grid:
    """The grid of sweep `sweep` of a results folder (the only one when None); see the module
    docstring. Raises ReportError (naming the file) for anything it cannot render."""
    root = Path(root)
    if not root.exists():
        raise ReportError(f"{root}: no such results folder")
    if not root.is_dir():
        raise ReportError(f"{root}: is a file, not a results folder (give the folder that holds cells/)")
    store = Store(root)
    found = store.manifest_names()
    if sweep is not None and sweep not in found:
        raise ReportError(f"{root}: no sweep {sweep!r} (sweeps here: {', '.join(found) or 'none'})")
    if sweep is None and len(found) > 1:
        raise ReportError(f"{root}: {len(found)} sweeps ({', '.join(found)}); choose one with --sweep NAME")
    grid = _from_manifest(store, sweep or found[0]) if found else _from_cells(store)
    if grid.problems and not allow_incomplete:
        lines = "\n".join(f"  {msg}" for _, msg in grid.problems)
        raise ReportError(f"{root}: {len(grid.problems)} damaged file(s):\n{lines}\n"
                          f"rerun `qbench sweep` to recompute them, or render anyway with --allow-incomplete")
    return grid


def _from_manifest(store: Store, name: str) -> Grid:
    m, path = store.read_manifest(name), store.manifest_file(name)
    recipes = list(m.get("recipes") or [])
    by_name = {r["name"]: r for r in recipes}
    if "arms" in m:
        arms = [Arm(a["name"], a.get("attention") or a["name"], a.get("label") or a["name"]) for a in m["arms"]]
        baseline = m.get("baseline") or arms[0].name
    else:   # old manifest: a pair of kinds
        arms = [Arm(k, k, k) for k in (m.get("pair") or {"softmax": None, "softpick": None})]
        baseline = "softmax" if any(a.name == "softmax" for a in arms) else arms[0].name
    grid = Grid(root=store.root, name=str(m.get("name") or path.stem), tasks=list(m.get("tasks", [])),
                limit=m.get("limit"), limit_note=m.get("limit_note") or "", device=m.get("device"),
                recipes=recipes, arms=arms, baseline=baseline, compare=m.get("compare") or "arms",
                manifest=path, calib_note=m.get("calib_note") or "")
    for i, c in enumerate(m["cells"]):
        try:
            key, arm, recipe = c["key"], _arm_of(c.get("arm") or c.get("model")), _recipe_of(c.get("recipe"))
        except (KeyError, TypeError):
            raise ReportError(f"{path}: cells[{i}] lacks 'key' or 'arm'") from None
        bits = c.get("bits")
        label = c.get("label") or bits_label(by_name.get(recipe), bits)
        entry = grid.entries.setdefault((arm, recipe, label), Entry(arm, recipe, label, bits))
        entry.cells.append(_cell(store, key, c.get("calib_seed"), grid.problems))
    for recipe in {e.recipe for e in grid.entries.values()} - set(by_name) - {FP}:
        recipes.append({"name": recipe, "method": "?", "bits": [], "description": ""})
    for e in grid.entries.values():
        e.cells.sort(key=lambda c: (c.calib_seed is not None, c.calib_seed or 0))
    return grid


def _newest(a: Cell, b: Cell) -> Cell:
    rank = lambda c: (c.record["status"] == "done", c.record.get("finished_at") or "")  # noqa: E731
    return a if rank(a) >= rank(b) else b


def _from_cells(store: Store) -> Grid:
    problems: list = []
    cells = [_cell(store, key, None, problems) for key in store.keys()]
    done = [c for c in cells if c.record is not None]
    if not done and not problems:
        raise ReportError(f"{store.root}: no sweep manifest ({LEGACY_MANIFEST} or {SWEEPS}/*.json) and no cells in "
                          f"{store.cells_dir}")
    chosen: dict = {}
    recipes: dict = {}
    tasks: list[str] = []
    limits = set()
    for c in sorted(done, key=lambda c: c.record.get("finished_at") or ""):
        r = c.record
        c.calib_seed = r.get("calib_seed")
        recipe = FP if r["recipe"] is None else r["recipe"]["name"]
        label = r.get("label") or bits_label(r["recipe"], r.get("bits"))
        pos = (_arm_of(r["model"]), recipe, label, c.calib_seed)
        chosen[pos] = _newest(chosen[pos], c) if pos in chosen else c
        if r["recipe"] is not None:
            info = recipes.setdefault(recipe, {"name": recipe, "method": r["recipe"].get("method"), "bits": [],
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
    names = sorted({pos[0] for pos in chosen})
    baseline = "softmax" if "softmax" in names else (names[0] if names else "")
    grid = Grid(root=store.root, name=store.root.name, tasks=tasks, limit=limit, limit_note=note, device=None,
                recipes=list(recipes.values()), arms=[Arm(n, n, n) for n in names], baseline=baseline,
                problems=problems)
    for info in grid.recipes:
        info["bits"].sort()
    for (arm, recipe, label, _), c in sorted(chosen.items(), key=lambda kv: str(kv[0])):
        entry = grid.entries.setdefault((arm, recipe, label), Entry(arm, recipe, label, c.record.get("bits")))
        entry.cells.append(c)
    return grid
