"""Sweep files, their validation, and their expansion into cells with content keys.

A sweep file (`recipes/paper.yaml`, `recipes/full.yaml`):

    name: paper                      # results go to results/<name>/ unless --results says otherwise
    pair:                            # the two checkpoints ("bundled" = checkpoints/tiny/{softmax,softpick})
      softmax: checkpoints/tiny/softmax
      softpick: checkpoints/tiny/softpick
    tasks: paper                     # a task-set name, a task name, or a list of them (qbench.eval)
    limit: null                      # examples per task; null = all
    cpu_limit: 20                    # examples per task when the sweep runs on CPU (null = `limit`)
    cpu_calib: {samples: 16, seq_len: 256}   # calibration batch of calibrating recipes on CPU
                                     # (null = each recipe's own `calib`)
    calibration_text: checkpoints/tiny/heldout/heldout_calib.txt.gz   # for recipes that calibrate
    device: auto                     # auto (cuda when there is one) | cpu | cuda
    dtype: auto                      # auto (float32 on CPU, bfloat16 on CUDA) | float32 | bfloat16 | float16
    eval: {batch_size: null, max_batch_tokens: null, scorer: qbench, bootstrap_iters: 1000}
    grid:
      - {recipe: hqq, bits: [2, 3, 4, 8]}   # recipe: a name in recipes/ or a path to a recipe YAML
      - {recipe: bnb, bits: [4, 8]}
      - {recipe: w4a8-rtn}                  # bits left out: every width the recipe lists

A file can start from another and change some fields (recipes/small/full.yaml: the full grid
on the `small` pair): `extends: ../full.yaml` (relative to the file), then the fields to replace.

Relative paths are taken from the current directory, or else from the qbench repository
(so `qbench sweep recipes/full.yaml` works from anywhere).

Everything is checked by `load_sweep` before any cell runs: unknown fields, unknown recipes,
widths a recipe does not support, unknown tasks or task data not prepared, a pair that is not
a pair, a missing calibration text, an unwritable results folder, a device that is not there.
Each error is a SweepError that names the file and the field.

`expand(sweep)` turns it into cells: one full-precision baseline per model, then every
(recipe, bits, model). A cell's key is the hash of its `identity`: everything that can change
its numbers (see `cell_identity`). Nothing else (paths, the sweep's name) goes into it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import paths
from ..errors import QBenchError
from ..files import file_sha256

KEY_SCHEMA = 1           # bump when the identity's layout changes
KEY_LENGTH = 20          # hex digits of sha256 kept as the cell key
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
SCORERS = ("qbench", "hf")
_TOP_FIELDS = ("name", "description", "pair", "tasks", "limit", "cpu_limit", "cpu_calib", "calibration_text",
               "device", "dtype", "eval", "grid")
_CPU_CALIB_FIELDS = ("samples", "seq_len")
_EVAL_FIELDS = ("batch_size", "max_batch_tokens", "scorer", "bootstrap_iters")
DEFAULT_CALIBRATION_TEXT = paths.BUNDLED_HELDOUT / "heldout_calib.txt.gz"
KINDS = ("softmax", "softpick")


class SweepError(QBenchError, ValueError):
    """A sweep file (or an option overriding it) that cannot run. Names the file and the field."""

    def __init__(self, source, field_name: str | None, problem: str):
        self.source, self.field, self.problem = str(source), field_name, problem
        where = f"{source}: field '{field_name}'" if field_name else str(source)
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class GridEntry:
    recipe: Any               # qbench.quant.Recipe
    bits: tuple[int, ...]


@dataclass
class Sweep:
    name: str
    source: str
    softmax: Path
    softpick: Path
    tasks: list[str]                  # resolved lm-eval task names
    limit: int | None                 # as written (examples per task, None = all)
    cpu_limit: int | None
    calibration_text: Path | None     # None when no recipe calibrates
    device: str                       # cpu | cuda (auto resolved)
    dtype: str
    eval: dict
    grid: list[GridEntry]
    results_dir: Path
    tasks_dir: Path
    limit_override: bool = False      # --limit / --no-limit given on the command line
    description: str = ""
    cpu_calib: dict | None = None     # applied to the grid's calibrating recipes (running on CPU)
    calib_applied: bool = False       # whether cpu_calib replaced the recipes' own calibration size

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
        if not self.calib_applied:
            return ""
        c, own = self.cpu_calib, "(recipe's)"
        return (f"calibration batches of {c.get('samples', own)} x {c.get('seq_len', own)} "
                f"tokens instead of the recipes' own (cpu_calib, running on CPU)")


@dataclass
class CellSpec:
    """Everything needed to compute one cell (a pure function of this spec) and its key."""
    key: str
    identity: dict                    # hashed into the key
    kind: str                         # softmax | softpick
    model_path: str
    recipe: Any                       # qbench.quant.Recipe, None for the full-precision baseline
    bits: int | None
    tasks: list[str]
    limit: int | None
    calibration_text: str | None
    device: str
    dtype: str
    eval: dict
    tasks_dir: str
    sweep: str = ""

    @property
    def recipe_name(self) -> str:
        return "fp" if self.recipe is None else self.recipe.name

    @property
    def label(self) -> str:
        if self.recipe is None:
            return f"{self.kind} full precision"
        return f"{self.kind} {self.recipe.name} {self.bits}-bit"

    def to_dict(self) -> dict:
        """Plain JSON data: what a remote worker needs to compute the cell (see from_dict)."""
        return {"key": self.key, "identity": self.identity, "kind": self.kind, "model_path": self.model_path,
                "recipe": None if self.recipe is None else self.recipe.to_dict(), "bits": self.bits,
                "tasks": self.tasks, "limit": self.limit, "calibration_text": self.calibration_text,
                "device": self.device, "dtype": self.dtype, "eval": self.eval, "tasks_dir": self.tasks_dir,
                "sweep": self.sweep}

    @classmethod
    def from_dict(cls, d: dict) -> "CellSpec":
        from ..quant import parse_recipe

        d = dict(d)
        if d["recipe"] is not None:
            d["recipe"] = parse_recipe(d["recipe"], source=f"<cell {d['key']}>")
        if key_of(d["identity"]) != d["key"]:
            raise ValueError(f"cell {d['key']}: the key is not the hash of the identity")
        return cls(**d)


# ----------------------------------------------------------------------------- loading
def _resolve_path(value, source, field_name) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise SweepError(source, field_name, f"expected a path, got {value!r}")
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    in_repo = paths.REPO_ROOT / p
    return in_repo if in_repo.exists() else p


def _opt_int(raw, source, name, minimum=1):
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < minimum:
        raise SweepError(source, name, f"expected null or an integer >= {minimum}, got {raw!r}")
    return raw


def resolve_pair(pair, source) -> tuple[Path, Path]:
    """The (softmax, softpick) folders of a sweep file's `pair` field (paths not checked yet)."""
    if pair == "bundled":
        pair = {"softmax": str(paths.BUNDLED_SOFTMAX), "softpick": str(paths.BUNDLED_SOFTPICK)}
    if not isinstance(pair, dict) or set(pair) != set(KINDS):
        raise SweepError(source, "pair", f"expected {{softmax: PATH, softpick: PATH}} or 'bundled', got {pair!r}")
    return (_resolve_path(pair["softmax"], source, "pair.softmax"),
            _resolve_path(pair["softpick"], source, "pair.softpick"))


def read_sweep_file(path, _children: tuple = ()) -> tuple[dict, str]:
    """The sweep file's fields; `extends: OTHER.yaml` (relative to this file) takes OTHER's fields
    and lets this file override any of them (e.g. the same grid on another pair)."""
    p = Path(path)
    if not p.is_file():
        alt = paths.REPO_ROOT / p
        if not p.is_absolute() and alt.is_file():
            p = alt
        else:
            raise SweepError(_children[-1] if _children else path, "extends" if _children else None,
                             f"no such sweep file: {path}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise SweepError(p, None, f"not valid YAML: {err}") from None
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
        data = {**base_data, **data}
    return data, str(p)


def load_sweep(path, *, results_dir=None, device: str | None = None, limit: int | None = None,
               no_limit: bool = False, full_calib: bool = False, check_store: bool = True) -> Sweep:
    """Parse and validate a sweep file (and command-line overrides); raises SweepError.

    Runs every check that can fail before a cell runs (recipes and bits, tasks and their data,
    limits, evaluation settings, device and dtype, the pair, the calibration text, the results
    folder); `check_store=False` leaves the results folder alone (dry runs, tests).
    """
    data, source = read_sweep_file(path)
    from .. import quant
    from ..eval import tasks as eval_tasks
    from ..eval.errors import EvalError
    from ..model import PairError, check_pair

    for key in data:
        if key not in _TOP_FIELDS:
            raise SweepError(source, str(key), f"unknown field; known fields: {list(_TOP_FIELDS)}")
    for key in ("name", "pair", "tasks", "grid"):
        if key not in data:
            raise SweepError(source, key, "missing (required)")
    name = data["name"]
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise SweepError(source, "name", f"expected a plain name (used as the results folder), got {name!r}")

    # grid: recipes and bit widths
    grid_raw = data["grid"]
    if not isinstance(grid_raw, list) or not grid_raw:
        raise SweepError(source, "grid", "expected a non-empty list of {recipe: ..., bits: [...]}")
    grid: list[GridEntry] = []
    seen = {}
    for i, entry in enumerate(grid_raw):
        where = f"grid[{i}]"
        if isinstance(entry, str):
            entry = {"recipe": entry}
        if not isinstance(entry, dict) or "recipe" not in entry:
            raise SweepError(source, where, f"expected {{recipe: NAME, bits: [...]}}, got {entry!r}")
        unknown = set(entry) - {"recipe", "bits"}
        if unknown:
            raise SweepError(source, f"{where}.{sorted(unknown)[0]}", "unknown field; known: ['recipe', 'bits']")
        ref = entry["recipe"]
        if not isinstance(ref, str) or not ref:
            raise SweepError(source, f"{where}.recipe", f"expected a recipe name or path, got {ref!r}")
        ref_path = Path(ref)
        if ref_path.suffix in (".yaml", ".yml") and not ref_path.is_absolute():
            ref = str(_resolve_path(ref, source, f"{where}.recipe"))
        try:
            recipe = quant.load_recipe(ref)
        except quant.RecipeError as err:
            raise SweepError(source, f"{where}.recipe", f"{entry['recipe']!r}: {err}") from None
        bits = entry.get("bits")
        if bits is None:
            bits = list(recipe.bits)
        if isinstance(bits, int) and not isinstance(bits, bool):
            bits = [bits]
        if not isinstance(bits, list) or not bits:
            raise SweepError(source, f"{where}.bits", f"expected a non-empty list of integers, got {bits!r}")
        for b in bits:
            if not isinstance(b, int) or isinstance(b, bool):
                raise SweepError(source, f"{where}.bits", f"expected integers, got {b!r}")
            if b not in recipe.bits:
                raise SweepError(source, f"{where}.bits", f"recipe {recipe.name!r} ({recipe.source}) does not "
                                 f"support {b}-bit; it supports {sorted(recipe.bits)}")
        if len(set(bits)) != len(bits):
            raise SweepError(source, f"{where}.bits", f"a width is listed twice: {bits}")
        if recipe.name in seen:
            raise SweepError(source, f"{where}.recipe", f"recipe {recipe.name!r} is already in grid[{seen[recipe.name]}]")
        seen[recipe.name] = i
        grid.append(GridEntry(recipe, tuple(sorted(bits))))

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
    if dev not in DEVICES:
        raise SweepError(source if device is None else "command line", "device",
                         f"{dev!r} is not one of {list(DEVICES)}")
    import torch

    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    elif dev == "cuda" and not torch.cuda.is_available():
        raise SweepError(source if device is None else "command line", "device", "cuda asked for, but no CUDA device is visible")
    # on CPU, smaller calibration batches (part of each resolved recipe, hence of the cell keys)
    cpu_calib = data.get("cpu_calib")
    if cpu_calib is not None:
        if not isinstance(cpu_calib, dict) or not cpu_calib:
            raise SweepError(source, "cpu_calib", f"expected null or {{samples: N, seq_len: T}}, got {cpu_calib!r}")
        for key, value in cpu_calib.items():
            if key not in _CPU_CALIB_FIELDS:
                raise SweepError(source, f"cpu_calib.{key}", f"unknown field; known: {list(_CPU_CALIB_FIELDS)}")
            _opt_int(value, source, f"cpu_calib.{key}")
    calib_applied = False
    if dev == "cpu" and cpu_calib and not full_calib:
        for i, entry in enumerate(grid):
            if entry.recipe.calib is not None:
                try:
                    recipe = entry.recipe.replace(calib={**entry.recipe.calib, **cpu_calib})
                except quant.RecipeError as err:
                    raise SweepError(source, "cpu_calib", f"does not fit recipe {entry.recipe.name!r}: {err}") from None
                grid[i] = GridEntry(recipe, entry.bits)
                calib_applied = True

    dtype = data.get("dtype", "auto")
    if dtype == "auto":
        dtype = "float32" if dev == "cpu" else "bfloat16"
    if dtype not in DTYPES:
        raise SweepError(source, "dtype", f"{dtype!r} is not one of {['auto', *DTYPES]}")

    # the pair
    softmax, softpick = resolve_pair(data["pair"], source)
    try:
        check_pair(softmax, softpick)
    except PairError as err:
        raise SweepError(source, "pair", str(err)) from None

    # calibration text (only needed when a recipe calibrates)
    calibrates = [e.recipe.name for e in grid if e.recipe.calib is not None]
    calib_text = None
    if calibrates:
        raw = data.get("calibration_text") or str(DEFAULT_CALIBRATION_TEXT)
        calib_text = _resolve_path(raw, source, "calibration_text")
        if not calib_text.is_file():
            raise SweepError(source, "calibration_text", f"{calib_text} does not exist (needed by the recipes "
                             f"{calibrates}, which calibrate on held-out text)")

    # task data (offline tasks must be prepared)
    tasks_dir = Path(paths.TASKS_DIR).resolve()
    try:
        eval_tasks.check_prepared(task_names, tasks_dir)
    except EvalError as err:
        raise SweepError(source, "tasks", str(err)) from None

    # results folder
    results = Path(results_dir) if results_dir is not None else Path("results") / name
    sweep = Sweep(name=name, source=source, softmax=softmax, softpick=softpick, tasks=task_names, limit=lim,
                  cpu_limit=cpu_limit, calibration_text=calib_text, device=dev, dtype=dtype, eval=eval_settings,
                  grid=grid, results_dir=results, tasks_dir=tasks_dir, limit_override=limit_override,
                  description=str(data.get("description", "")), cpu_calib=cpu_calib, calib_applied=calib_applied)
    if check_store:
        from .store import Store, StoreError

        try:
            Store(results).ensure_writable()
        except StoreError as err:
            raise SweepError(source if results_dir is None else "command line", "results", str(err)) from None
    return sweep


# ----------------------------------------------------------------------------- identity and keys
def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def key_of(identity: dict) -> str:
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:KEY_LENGTH]


def _dist(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def library_versions() -> dict:
    """Libraries every cell runs through (the quantizer's own library is added per recipe)."""
    return {name: _dist(name) for name in ("torch", "transformers", "tokenizers", "lm_eval", "numpy")}


_CODE_AREAS = {
    # area -> (module that may define CODE_VERSION, source files hashed when it does not)
    "model": ("qbench.model.modeling", ["model/modeling.py", "model/config.py"]),
    "attention": ("qbench.attention", ["attention/__init__.py", "attention/reference.py",
                                       "attention/triton_softpick.py"]),
    "eval": ("qbench.eval", ["eval/adapter.py", "eval/runner.py", "eval/metrics.py"]),
}


def qbench_code_versions() -> dict:
    """Version of qbench's own code that every cell runs (model, attention kernel, scorer): the
    area's CODE_VERSION constant where it defines one, else a hash of its source files."""
    from importlib import import_module

    out = {}
    root = Path(__file__).resolve().parent.parent
    for area, (module, files) in _CODE_AREAS.items():
        try:
            version = getattr(import_module(module), "CODE_VERSION", None)
        except ImportError:
            version = None
        if version is None:
            h = hashlib.sha256()
            for rel in files:
                p = root / rel
                if p.is_file():
                    h.update(rel.encode())
                    h.update(p.read_bytes())
            version = "src-" + h.hexdigest()[:12]
        out[area] = str(version)
    return out


def device_identity(device: str) -> dict:
    if device == "cuda":
        import torch

        return {"type": "cuda", "name": torch.cuda.get_device_name(0)}
    return {"type": device}


def cell_identity(*, kind: str, model_hash: str, recipe, bits: int | None, tasks: list[str],
                  task_data: dict, limit: int | None, calibration: dict | None, eval_settings: dict,
                  device: dict, dtype: str, versions: dict, code: dict) -> dict:
    """What a cell's numbers depend on; its hash is the cell key."""
    return {
        "schema": KEY_SCHEMA,
        "model": {"kind": kind, "hash": model_hash},
        "recipe": None if recipe is None else recipe.to_dict(),
        "bits": bits,
        "calibration": calibration,
        "eval": {"tasks": list(tasks), "task_data": dict(task_data), "limit": limit, **eval_settings},
        "device": device,
        "dtype": dtype,
        "versions": versions,
        "code": code,
    }


def expand(sweep: Sweep) -> list[CellSpec]:
    """The sweep's cells: baselines first (softmax, softpick), then grid order x bits x model."""
    from .. import quant
    from ..eval.tasks import task_fingerprint
    from ..model import checkpoint_hash

    hashes = {"softmax": checkpoint_hash(sweep.softmax), "softpick": checkpoint_hash(sweep.softpick)}
    paths_of = {"softmax": str(sweep.softmax), "softpick": str(sweep.softpick)}
    task_data = task_fingerprint(sweep.tasks, sweep.tasks_dir)
    base_versions = library_versions()
    base_code = qbench_code_versions()
    dev = device_identity(sweep.device)
    limit = sweep.effective_limit
    calib_sha = file_sha256(sweep.calibration_text) if sweep.calibration_text else None

    def make(kind, recipe, bits):
        versions = dict(base_versions)
        code = dict(base_code)
        calibration = None
        if recipe is not None:
            versions.update(quant.library_versions(recipe))
            code["quant"] = quant.code_versions(recipe)
            if recipe.calib is not None:
                calibration = {"text_sha256": calib_sha, **dict(recipe.calib)}
        identity = cell_identity(kind=kind, model_hash=hashes[kind], recipe=recipe, bits=bits, tasks=sweep.tasks,
                                 task_data=task_data, limit=limit, calibration=calibration,
                                 eval_settings=sweep.eval, device=dev, dtype=sweep.dtype, versions=versions,
                                 code=code)
        return CellSpec(key=key_of(identity), identity=identity, kind=kind, model_path=paths_of[kind],
                        recipe=recipe, bits=bits, tasks=list(sweep.tasks), limit=limit,
                        calibration_text=str(sweep.calibration_text) if calibration else None,
                        device=sweep.device, dtype=sweep.dtype, eval=dict(sweep.eval),
                        tasks_dir=str(sweep.tasks_dir), sweep=sweep.name)

    cells = [make(kind, None, None) for kind in KINDS]
    for entry in sweep.grid:
        for bits in entry.bits:
            for kind in KINDS:
                cells.append(make(kind, entry.recipe, bits))
    keys = [c.key for c in cells]
    assert len(set(keys)) == len(keys), "two cells of one sweep share a key"
    return cells


def manifest(sweep: Sweep, cells: list[CellSpec]) -> dict:
    """What `sweep.json` records: the sweep's settings and its grid of cell keys (for tables)."""
    return {
        "name": sweep.name,
        "source": sweep.source,
        "description": sweep.description,
        "pair": {"softmax": str(sweep.softmax), "softpick": str(sweep.softpick)},
        "tasks": sweep.tasks,
        "limit": sweep.effective_limit,
        "limit_note": sweep.limit_note(),
        "calib_note": sweep.calib_note(),
        "device": sweep.device,
        "dtype": sweep.dtype,
        "recipes": [{"name": e.recipe.name, "method": e.recipe.method, "bits": list(e.bits),
                     "activation": None if e.recipe.activation is None else dict(e.recipe.activation),
                     "calib": None if e.recipe.calib is None else dict(e.recipe.calib),
                     "description": e.recipe.description} for e in sweep.grid],
        "cells": [{"key": c.key, "model": c.kind, "recipe": c.recipe_name, "bits": c.bits} for c in cells],
    }
