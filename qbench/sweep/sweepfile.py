"""Sweep files: their format and their validation (everything is checked before any cell runs).

    name: paper                      # results go to results/<name>/ unless --results says otherwise
    arms:                            # two or more checkpoints to compare (or one: a study of one model)
      - {name: softmax, path: checkpoints/tiny/softmax}
      - {name: softpick, path: checkpoints/tiny/softpick}
      - {name: softmax1, path: checkpoints/x, attention: softmax1}   # attention forced for this arm
    baseline: softmax                # the arm the others are compared with (default: the first)
    compare: arms                    # arms: variants of one model (shared tokenizer and architecture);
                                     # models: different models (deltas only against each arm's own FP)
    pair: {softmax: PATH, softpick: PATH}   # instead of `arms`: the two-arm case ("bundled" = the
                                     # bundled pair checkpoints/tiny/{softmax,softpick})
    tasks: paper                     # a task-set name, a task name, or a list of them (qbench.eval)
    limit: null                      # examples per task; null = all
    cpu_limit: 20                    # examples per task when the sweep runs on CPU (null = `limit`)
    cpu_calib: {samples: 16, seq_len: 256}   # calibration batch of calibrating recipes on CPU
    calib_seeds: 1                   # calibrated recipes are repeated with calibration seeds 0..N-1
    calibration_text: checkpoints/tiny/heldout/heldout_calib.txt.gz   # for recipes that calibrate
    device: auto                     # auto (cuda when there is one) | cpu | cuda
    dtype: auto                      # auto (float32 on CPU, bfloat16 on CUDA) | float32 | bfloat16 | float16
    eval: {batch_size: null, max_batch_tokens: null, scorer: qbench, bootstrap_iters: 1000}
    grid:
      - {recipe: hqq, bits: [2, 3, 4, 8]}   # recipe: a name in recipes/ or a path to a recipe YAML
      - {recipe: w4a8-rtn}                  # bits left out: every width the recipe lists
      - {recipe: rtn, bits: [4], act_bits: [null, 8, 4], kv_bits: [null, 4]}   # axes: one point each

A file can start from another and change some fields (recipes/small/full.yaml: the full grid on
the `small` pair): `extends: ../full.yaml` (relative to the file), then the fields to replace.
A sweep file is a path, or the name of one in a recipe folder (`qbench sweep full`). Relative paths
(in the file too) are taken from the current folder, else inside the package (qbench/paths.py):
`recipes/full.yaml` and `checkpoints/tiny/softmax` work from any folder.

`load_sweep` checks everything that can fail before a cell runs: unknown fields, unknown
recipes, widths a recipe does not support, axes a recipe cannot take, unknown tasks or task
data not prepared, arms that cannot be read or do not fit together, a recipe whose layer
patterns select nothing or whose group size does not divide a selected layer of an arm, a
missing calibration text, a results path that is a file or not writable, a device that is not
there. Each error is a SweepError that names the file and the field.
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import QBenchError
from ..files import read_yaml

DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
SCORERS = ("qbench", "hf")
COMPARES = ("arms", "models")
_TOP_FIELDS = ("name", "description", "arms", "pair", "baseline", "compare", "tasks", "limit", "cpu_limit",
               "cpu_calib", "calib_seeds", "calibration_text", "device", "dtype", "eval", "grid")
_ARM_FIELDS = ("name", "path", "attention", "label")
_GRID_FIELDS = ("recipe", "bits", "act_bits", "kv_bits")
_CPU_CALIB_FIELDS = ("samples", "seq_len")
_EVAL_FIELDS = ("batch_size", "max_batch_tokens", "scorer", "bootstrap_iters")
DEFAULT_CALIBRATION_TEXT = paths.BUNDLED_HELDOUT / "heldout_calib.txt.gz"
PAIR_ARMS = ("softmax", "softpick")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class SweepError(QBenchError, ValueError):
    """A sweep file (or an option overriding it) that cannot run. Names the file and the field."""

    def __init__(self, source, field_name: str | None, problem: str):
        self.source, self.field, self.problem = str(source), field_name, problem
        where = f"{source}: field '{field_name}'" if field_name else str(source)
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Arm:
    """One model of a sweep: a checkpoint with an attention kind."""
    name: str                 # the arm's name in cells and tables
    path: Path
    attention: str            # attention kind the arm runs (from its config, or forced)
    forced: bool = False      # `attention` given in the sweep file
    label: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "attention": self.attention,
                "forced": self.forced, "label": self.label or self.name}


@dataclass(frozen=True)
class GridPoint:
    """One column of a recipe's table: a recipe (axes applied) at a weight width."""
    entry: str                # the grid entry's recipe name (tables group by it)
    recipe: Any               # qbench.quant.Recipe, resolved (axes and calibration seed applied)
    bits: int | None
    label: str
    calib_seed: int | None    # the calibration seed of a calibrating recipe


@dataclass
class Sweep:
    name: str
    source: str
    arms: list[Arm]
    baseline: str
    compare: str
    tasks: list[str]                  # resolved lm-eval task names
    limit: int | None                 # as written (examples per task, None = all)
    cpu_limit: int | None
    calibration_text: Path | None     # None when no recipe calibrates
    device: str                       # cpu | cuda (auto resolved)
    dtype: str
    eval: dict
    points: list[GridPoint]
    entries: list[dict]               # per grid entry: name, method, description (for the manifest)
    results_dir: Path
    tasks_dir: Path
    limit_override: bool = False      # --limit / --no-limit given on the command line
    description: str = ""
    cpu_calib: dict | None = None
    calib_applied: bool = False       # whether cpu_calib replaced the recipes' own calibration size
    calib_seeds: int = 1

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    @property
    def effective_limit(self) -> int | None:
        """Examples per task this run uses: `limit`, or on CPU `cpu_limit` (the smaller of the two)."""
        if self.limit_override or self.device != "cpu" or self.cpu_limit is None:
            return self.limit
        return self.cpu_limit if self.limit is None else min(self.limit, self.cpu_limit)

    def limit_note(self) -> str:
        lim = self.effective_limit
        if lim is None:
            return "all examples of every task (no limit)"
        why = "--limit" if self.limit_override else ("cpu_limit, running on CPU" if lim == self.cpu_limit
                                                     and self.device == "cpu" else "limit")
        return f"at most {lim} examples per task ({why})"

    def calib_note(self) -> str:
        """How the calibrating recipes were calibrated in this run ('' when as the recipes say)."""
        parts = []
        if self.calib_applied:
            c, own = self.cpu_calib, "(recipe's)"
            parts.append(f"calibration batches of {c.get('samples', own)} x {c.get('seq_len', own)} "
                         f"tokens instead of the recipes' own (cpu_calib, running on CPU)")
        if self.calib_seeds > 1:
            parts.append(f"each calibrating recipe repeated with calibration seeds 0..{self.calib_seeds - 1}")
        return "; ".join(parts)


# ----------------------------------------------------------------------------- reading
def resolve_path(value, source, field_name) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise SweepError(source, field_name, f"expected a path, got {value!r}")
    return paths.find(value)


def _opt_int(raw, source, name, minimum=1):
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < minimum:
        raise SweepError(source, name, f"expected null or an integer >= {minimum}, got {raw!r}")
    return raw


def read_sweep_file(path, _children: tuple = ()) -> tuple[dict, str]:
    """The sweep file's fields; `extends: OTHER.yaml` (relative to this file) takes OTHER's fields
    and lets this file override any of them (e.g. the same grid on another pair)."""
    p = paths.find(path)
    if not p.is_file() and not _children and Path(path).suffix not in (".yaml", ".yml"):
        p = next((d / f"{path}.yaml" for d in paths.recipe_dirs() if (d / f"{path}.yaml").is_file()), p)   # a name
    if not p.is_file():
        raise SweepError(_children[-1] if _children else path, "extends" if _children else None,
                         f"no such sweep file: {path}")
    try:
        data = read_yaml(p)
    except ValueError as err:
        raise SweepError(p, None, str(err)) from None
    if not isinstance(data, dict):
        raise SweepError(p, None, f"a sweep file is a mapping of fields, got {type(data).__name__}")
    if "extends" in data:
        base = data.pop("extends")
        if not isinstance(base, str) or not base:
            raise SweepError(p, "extends", f"expected the path of another sweep file, got {base!r}")
        base_path = (p.parent / base).resolve()
        if base_path in [c.resolve() for c in (*_children, p)]:
            raise SweepError(p, "extends", f"{base} extends this file again (a cycle)")
        base_data, _ = read_sweep_file(base_path, (*_children, p))
        if ("arms" in data or "pair" in data):   # the arms of this file replace the base's, whichever form
            base_data.pop("arms", None)
            base_data.pop("pair", None)
            base_data.pop("baseline", None)
        data = {**base_data, **data}
    return data, str(p)


def _arms_of(data: dict, source: str) -> tuple[list[dict], str | None]:
    """The raw arm entries (name, path, attention?, label?) and the baseline as written."""
    if "arms" in data and "pair" in data:
        raise SweepError(source, "pair", "give either `arms` or `pair`, not both")
    if "pair" in data:
        pair = data["pair"]
        if pair == "bundled":
            pair = {"softmax": str(paths.BUNDLED_SOFTMAX), "softpick": str(paths.BUNDLED_SOFTPICK)}
        if not isinstance(pair, dict) or set(pair) != set(PAIR_ARMS):
            raise SweepError(source, "pair", f"expected {{softmax: PATH, softpick: PATH}} or 'bundled', got {pair!r}")
        # a pair states each model's attention: the checkpoint must say the same (checked below)
        return [{"name": k, "path": pair[k], "expect": k} for k in PAIR_ARMS], data.get("baseline", "softmax")
    if "arms" not in data:
        raise SweepError(source, "arms", "missing (required: the checkpoints to compare; or `pair`)")
    out = [dict(arm) for _, arm in _entries(data["arms"], source, "arms", "path", _ARM_FIELDS,
                                            "{name: NAME, path: PATH}", "{name: NAME, path: PATH, attention: KIND}")]
    return out, data.get("baseline")


def _entries(raw, source: str, field_name: str, key: str, known, listed: str, shape: str):
    """(where, entry) for each entry of the list `field_name`: a mapping with `key` and only `known`
    fields, or a plain string as shorthand for {key: string}; SweepError naming the entry otherwise."""
    if not isinstance(raw, list) or not raw:
        raise SweepError(source, field_name, f"expected a non-empty list of {listed}")
    for i, entry in enumerate(raw):
        where = f"{field_name}[{i}]"
        if isinstance(entry, str):
            entry = {key: entry}
        if not isinstance(entry, dict) or key not in entry:
            raise SweepError(source, where, f"expected {shape}, got {entry!r}")
        unknown = set(entry) - set(known)
        if unknown:
            raise SweepError(source, f"{where}.{sorted(unknown)[0]}", f"unknown field; known: {list(known)}")
        yield where, entry


def sweep_arms(path) -> tuple[list[tuple[str, Path, str | None]], Path | None]:
    """The arms of a sweep file as (name, path, forced attention or None), read as `qbench sweep`
    reads them (extends: followed), and its results folder when one exists (for `qbench diagnose`)."""
    data, source = read_sweep_file(path)
    raw, _ = _arms_of(data, source)
    arms = [(a.get("name") or Path(a["path"]).name, resolve_path(a["path"], source, "arms"), a.get("attention"))
            for a in raw]
    results = resolve_path(f"results/{data['name']}", source, "name") if isinstance(data.get("name"), str) else None
    return arms, (results if results is not None and results.is_dir() else None)


def _inspect(path: Path, attention: str | None, source: str, where: str):
    """The arm's CheckpointInfo (headers only, strict tensor check); SweepError naming the arm."""
    from ..model import inspect_checkpoint

    try:
        return inspect_checkpoint(path, attention=attention)
    except QBenchError as err:
        raise SweepError(source, where, str(err)) from None


def _check_arms(arms_raw: list[dict], baseline, compare: str, source: str) -> tuple[list[Arm], str, dict]:
    from ..attention import KINDS
    from ..model import arm_differences, checkpoint_hash

    arms, infos, seen = [], {}, set()
    for i, raw in enumerate(arms_raw):
        where = f"arms[{i}]" if "expect" not in raw else f"pair.{raw['name']}"
        path = resolve_path(raw["path"], source, f"{where}.path")
        attention = raw.get("attention")
        if attention is not None and attention not in KINDS:
            raise SweepError(source, f"{where}.attention", f"{attention!r} is not an attention kind; known: {list(KINDS)}")
        info = _inspect(path, attention, source, where)
        if "expect" in raw and info.attention != raw["expect"]:
            raise SweepError(source, where, f"{path} was given as the {raw['expect']} model but its attention is "
                             f"{info.attention} ({info.attention_source})")
        name = raw.get("name") or path.name
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise SweepError(source, f"{where}.name", f"expected a plain name (letters, digits, _.+-), got {name!r}")
        if name in seen:
            raise SweepError(source, f"{where}.name", f"arm name {name!r} is used twice")
        seen.add(name)
        label = raw.get("label", "")
        if not isinstance(label, str):
            raise SweepError(source, f"{where}.label", f"expected text, got {label!r}")
        arms.append(Arm(name, path, info.attention, attention is not None, label))
        infos[name] = info
    same = {}
    for a in arms:
        same.setdefault(checkpoint_hash(a.path, a.attention), []).append(a.name)
    dup = [names for names in same.values() if len(names) > 1]
    if dup:
        raise SweepError(source, "arms", f"arms {dup[0]} are the same checkpoint with the same attention: "
                         f"their cells would be identical")
    baseline = baseline if baseline is not None else arms[0].name
    if baseline not in seen:
        raise SweepError(source, "baseline", f"{baseline!r} is not an arm; arms: {[a.name for a in arms]}")
    if compare == "arms" and len(arms) > 1:
        diffs = arm_differences(list(infos.values()))
        if diffs:
            raise SweepError(source, "arms", f"the arms are not variants of one model ({'; '.join(diffs)}); set "
                             f"`compare: models` to compare different models (deltas are then taken against each "
                             f"arm's own full precision only)")
    return arms, baseline, infos


def _grid_points(data: dict, source: str, quant) -> tuple[list[GridPoint], list[dict]]:
    points, entries, seen = [], [], {}
    for where, entry in _entries(data["grid"], source, "grid", "recipe", _GRID_FIELDS,
                                 "{recipe: ..., bits: [...]}", "{recipe: NAME, bits: [...]}"):
        ref = entry["recipe"]
        if not isinstance(ref, str) or not ref:
            raise SweepError(source, f"{where}.recipe", f"expected a recipe name or path, got {ref!r}")
        if Path(ref).suffix in (".yaml", ".yml") and not Path(ref).is_absolute():
            ref = str(resolve_path(ref, source, f"{where}.recipe"))
        try:
            recipe = quant.load_recipe(ref)
        except quant.RecipeError as err:
            raise SweepError(source, f"{where}.recipe", f"{entry['recipe']!r}: {err}") from None
        bits = entry.get("bits")
        if bits is None:
            bits = list(recipe.bits) if recipe.bits else [None]
        if isinstance(bits, int) and not isinstance(bits, bool):
            bits = [bits]
        if not isinstance(bits, list) or not bits:
            raise SweepError(source, f"{where}.bits", f"expected a non-empty list of integers, got {bits!r}")
        for b in bits:
            if b is None and not recipe.bits:
                continue
            if not isinstance(b, int) or isinstance(b, bool):
                raise SweepError(source, f"{where}.bits", f"expected integers, got {b!r}")
            if b not in recipe.bits:
                raise SweepError(source, f"{where}.bits", f"recipe {recipe.name!r} ({recipe.source}) does not "
                                 f"support {b}-bit; it supports {sorted(recipe.bits)}")
        if len(set(bits)) != len(bits):
            raise SweepError(source, f"{where}.bits", f"a width is listed twice: {bits}")
        if recipe.name in seen:
            raise SweepError(source, f"{where}.recipe", f"recipe {recipe.name!r} is already in {seen[recipe.name]}")
        seen[recipe.name] = where
        axes = {}
        for axis in ("act_bits", "kv_bits"):
            if axis in entry:
                values = entry[axis] if isinstance(entry[axis], list) else [entry[axis]]
                if not values or len(set(map(str, values))) != len(values) or any(
                        isinstance(v, (bool, float, list, dict)) for v in values):
                    raise SweepError(source, f"{where}.{axis}", f"expected a list of distinct widths (integers), "
                                     f"formats (fp8, mxfp4, nvfp4) or null, got {entry[axis]!r}")
                axes[axis] = values
        variants = [recipe]
        if axes:
            variants = []
            for combo in itertools.product(*axes.values()):
                try:
                    variants.append(recipe.with_axes(**dict(zip(axes, combo))))
                except quant.RecipeError as err:
                    raise SweepError(source, f"{where}.{'/'.join(axes)}", f"{dict(zip(axes, combo))}: {err}") from None
        for variant in variants:
            for b in sorted(bits, key=lambda x: -1 if x is None else x):
                points.append(GridPoint(recipe.name, variant, b, variant.label(b), None))
        entries.append({"name": recipe.name, "method": recipe.method, "description": recipe.description,
                        "bits": sorted(b for b in bits if b is not None)})
    labels = {}
    for p in points:
        if (p.entry, p.label) in labels:
            raise SweepError(source, "grid", f"recipe {p.entry!r} has two points labelled {p.label!r}")
        labels[(p.entry, p.label)] = p
    return points, entries


def load_sweep(path, *, results_dir=None, device: str | None = None, limit: int | None = None,
               no_limit: bool = False, full_calib: bool = False, check_store: bool = True) -> Sweep:
    """Parse and validate a sweep file (and command-line overrides); raises SweepError.
    `check_store=False` leaves the results folder alone (dry runs, tests)."""
    data, source = read_sweep_file(path)
    from .. import quant
    from ..eval import tasks as eval_tasks
    from ..eval.errors import EvalError

    for key in data:
        if key not in _TOP_FIELDS:
            raise SweepError(source, str(key), f"unknown field; known fields: {list(_TOP_FIELDS)}")
    for key in ("name", "tasks", "grid"):
        if key not in data:
            raise SweepError(source, key, "missing (required)")
    name = data["name"]
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SweepError(source, "name", f"expected a plain name (used as the results folder), got {name!r}")

    points, entries = _grid_points(data, source, quant)

    # tasks and limits
    try:
        task_names = eval_tasks.resolve_tasks(data["tasks"])
    except EvalError as err:
        raise SweepError(source, "tasks", str(err)) from None
    if limit is not None and no_limit:
        raise SweepError("command line", "--limit", "--limit and --no-limit exclude each other")
    limit_override = limit is not None or no_limit
    lim = _opt_int(limit, "command line", "--limit") if limit_override else _opt_int(data.get("limit"), source, "limit")
    cpu_limit = _opt_int(data.get("cpu_limit"), source, "cpu_limit")

    # evaluation settings
    ev = data.get("eval") or {}
    if not isinstance(ev, dict):
        raise SweepError(source, "eval", f"expected a mapping, got {ev!r}")
    for key in ev:
        if key not in _EVAL_FIELDS:
            raise SweepError(source, f"eval.{key}", f"unknown field; known: {list(_EVAL_FIELDS)}")
    eval_settings = {
        "batch_size": _opt_int(ev.get("batch_size"), source, "eval.batch_size"),
        "max_batch_tokens": _opt_int(ev.get("max_batch_tokens"), source, "eval.max_batch_tokens"),
        "scorer": ev.get("scorer", "qbench"),
        "bootstrap_iters": ev.get("bootstrap_iters", 1000),
    }
    if eval_settings["scorer"] not in SCORERS:
        raise SweepError(source, "eval.scorer", f"{eval_settings['scorer']!r} is not one of {list(SCORERS)}")
    if _opt_int(eval_settings["bootstrap_iters"], source, "eval.bootstrap_iters", minimum=0) is None:
        raise SweepError(source, "eval.bootstrap_iters", "expected an integer >= 0")

    # device and dtype
    dev = device or data.get("device", "auto")
    dev_source = source if device is None else "command line"
    if dev not in DEVICES:
        raise SweepError(dev_source, "device", f"{dev!r} is not one of {list(DEVICES)}")
    import torch

    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    elif dev == "cuda" and not torch.cuda.is_available():
        raise SweepError(dev_source, "device", "cuda asked for, but no CUDA device is visible")
    dtype = data.get("dtype", "auto")
    if dtype == "auto":
        dtype = "float32" if dev == "cpu" else "bfloat16"
    if dtype not in DTYPES:
        raise SweepError(source, "dtype", f"{dtype!r} is not one of {['auto', *DTYPES]}")

    # calibration: smaller batches on CPU, repeated seeds (both part of each resolved recipe, hence of the keys)
    cpu_calib = data.get("cpu_calib")
    if cpu_calib is not None:
        if not isinstance(cpu_calib, dict) or not cpu_calib:
            raise SweepError(source, "cpu_calib", f"expected null or {{samples: N, seq_len: T}}, got {cpu_calib!r}")
        for key, value in cpu_calib.items():
            if key not in _CPU_CALIB_FIELDS:
                raise SweepError(source, f"cpu_calib.{key}", f"unknown field; known: {list(_CPU_CALIB_FIELDS)}")
            _opt_int(value, source, f"cpu_calib.{key}")
    seeds = _opt_int(data.get("calib_seeds", 1), source, "calib_seeds")
    calib_applied = (dev == "cpu" and bool(cpu_calib) and not full_calib
                     and any(p.recipe.calib is not None for p in points))
    resolved = []
    for p in points:
        if p.recipe.calib is None:
            resolved.append(p)
            continue
        calib = {**p.recipe.calib, **(cpu_calib if calib_applied else {})}
        for seed in range(seeds):
            try:
                recipe = p.recipe.replace(calib={**calib, "seed": seed})
            except quant.RecipeError as err:
                raise SweepError(source, "cpu_calib", f"does not fit recipe {p.recipe.name!r}: {err}") from None
            resolved.append(GridPoint(p.entry, recipe, p.bits, p.label, seed))
    points = resolved

    # the arms
    compare = data.get("compare", "arms")
    if compare not in COMPARES:
        raise SweepError(source, "compare", f"{compare!r} is not one of {list(COMPARES)}")
    arms_raw, baseline = _arms_of(data, source)
    arms, baseline, infos = _check_arms(arms_raw, baseline, compare, source)
    for p in points:   # every recipe must fit every arm: layers selected, group sizes dividing them
        for a in arms:
            try:
                quant.check_fits(p.recipe, p.bits, infos[a.name].linear_layers)
            except quant.QuantError as err:
                raise SweepError(source, "grid", f"recipe {p.recipe.name!r} on arm {a.name!r} ({a.path}): {err}") from None

    # calibration text (only needed when a recipe calibrates)
    calibrates = sorted({p.recipe.name for p in points if p.recipe.calib is not None})
    calib_text = None
    if calibrates:
        raw = data.get("calibration_text") or str(DEFAULT_CALIBRATION_TEXT)
        calib_text = resolve_path(raw, source, "calibration_text")
        if not calib_text.is_file():
            raise SweepError(source, "calibration_text", f"{calib_text} does not exist (needed by the recipes "
                             f"{calibrates}, which calibrate on held-out text)")

    # task data (offline tasks must be prepared)
    tasks_dir = Path(paths.TASKS_DIR).resolve()
    try:
        eval_tasks.check_prepared(task_names, tasks_dir)
    except EvalError as err:
        raise SweepError(source, "tasks", str(err)) from None

    results = Path(results_dir) if results_dir is not None else Path("results") / name
    sweep = Sweep(name=name, source=source, arms=arms, baseline=baseline, compare=compare, tasks=task_names,
                  limit=lim, cpu_limit=cpu_limit, calibration_text=calib_text, device=dev, dtype=dtype,
                  eval=eval_settings, points=points, entries=entries, results_dir=results, tasks_dir=tasks_dir,
                  limit_override=limit_override, description=str(data.get("description", "")),
                  cpu_calib=cpu_calib, calib_applied=calib_applied, calib_seeds=seeds)
    where = source if results_dir is None else "command line"
    if results.exists() and not results.is_dir():
        raise SweepError(where, "results", f"{results} is a file, not a folder")
    if check_store:
        from .store import Store, StoreError

        try:
            Store(results).ensure_writable()
        except StoreError as err:
            raise SweepError(where, "results", str(err)) from None
    return sweep
