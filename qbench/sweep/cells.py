"""Cell identity: what a cell's numbers depend on, its key, and the expansion of a sweep into cells.

A cell is one (arm, grid point) of a sweep, or an arm's full-precision baseline. Its key is the
hash of its `identity`: the arm's checkpoint content hash and attention kind, the resolved
recipe (axes, calibration seed and size included) and weight width, the calibration text's
hash, the tasks with a fingerprint of the task data evaluation reads, the example limit and
evaluation settings, the device type and dtype, the versions of the libraries it runs through
and of qbench's own code areas it runs (qbench/identity.py: model, attention, scorer, the cell
computation, and the recipe's quantizers and calibration), and the runtime switches that change
numbers (identity.runtime_identity). Nothing else (paths, arm names, labels, the sweep's name)
goes into it: renaming an arm or moving a checkpoint never recomputes a cell.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .. import identity as code_identity
from ..files import file_sha256
from .sweepfile import Arm, Sweep

KEY_SCHEMA = 4           # bump when the identity's layout changes (4: the CPU in a CPU cell's runtime)
KEY_LENGTH = 20          # hex digits of sha256 kept as the cell key
_BASE_LIBRARIES = ("torch", "transformers", "tokenizers", "lm_eval", "numpy")


@dataclass
class CellSpec:
    """Everything needed to compute one cell (a pure function of this spec) and its key."""
    key: str
    identity: dict                    # hashed into the key
    arm: str                          # the arm's name
    attention: str                    # the arm's attention kind
    model_path: str
    recipe: Any                       # qbench.quant.Recipe, None for the full-precision baseline
    entry: str                        # the grid entry's recipe name ("fp" for the baseline)
    bits: int | None
    label: str
    calib_seed: int | None
    tasks: list[str]
    limit: int | None
    calibration_text: str | None
    device: str
    dtype: str
    eval: dict
    tasks_dir: str
    sweep: str = ""

    @property
    def is_baseline(self) -> bool:
        return self.recipe is None

    @property
    def describe(self) -> str:
        """'softpick hqq 4-bit' style text for progress lines."""
        seed = f" seed {self.calib_seed}" if self.calib_seed else ""
        what = "full precision" if self.recipe is None else f"{self.entry} {self.label}{seed}"
        return f"{self.arm} {what}"

    def to_dict(self) -> dict:
        """Plain JSON data: what a remote worker needs to compute the cell (see from_dict)."""
        d = {name: getattr(self, name) for name in self.__dataclass_fields__}
        d["recipe"] = None if self.recipe is None else {**self.recipe.to_dict(), "description": self.recipe.description}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CellSpec":
        from ..quant import parse_recipe

        d = dict(d)
        if d["recipe"] is not None:
            d["recipe"] = parse_recipe(d["recipe"], source=f"<cell {d['key']}>")
        if key_of(d["identity"]) != d["key"]:
            raise ValueError(f"cell {d['key']}: the key is not the hash of the identity")
        return cls(**d)


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


def library_versions(recipe) -> dict:
    """Libraries a cell runs through: the common ones and the recipe's quantization libraries."""
    out = {name: _dist(name) for name in _BASE_LIBRARIES}
    if recipe is not None:
        from .. import quant

        out.update(quant.library_versions(recipe))
    return out


def device_identity(device: str) -> dict:
    if device == "cuda":
        import torch

        return {"type": "cuda", "name": torch.cuda.get_device_name(0)}
    return {"type": device}


def cell_identity(*, arm: Arm, model_hash: str, recipe, bits: int | None, tasks: list[str], task_data: dict,
                  limit: int | None, calibration: dict | None, eval_settings: dict, device: str, dtype: str,
                  cpu_threads: int | None = None) -> dict:
    """What a cell's numbers depend on; its hash is the cell key (see the module docstring)."""
    resolved = None if recipe is None else recipe.to_dict()
    return {
        "schema": KEY_SCHEMA,
        "model": {"attention": arm.attention, "hash": model_hash},
        "recipe": resolved,
        "bits": bits,
        "calibration": calibration,
        "eval": {"tasks": list(tasks), "task_data": dict(task_data), "limit": limit, **eval_settings},
        "device": device_identity(device),
        "dtype": dtype,
        "versions": library_versions(recipe),
        "code": code_identity.cell_code_versions(resolved),
        "runtime": code_identity.runtime_identity(device, cpu_threads),
    }


def expand(sweep: Sweep, cpu_threads: int | None = None) -> list[CellSpec]:
    """The sweep's cells: each arm's baseline first, then grid order (points x arms). On CPU,
    `cpu_threads` is the torch thread count each cell will compute with (run.cell_threads; default
    this process's)."""
    from ..eval.tasks import task_fingerprint
    from ..model import checkpoint_hash

    hashes = {a.name: checkpoint_hash(a.path, a.attention) for a in sweep.arms}
    task_data = task_fingerprint(sweep.tasks, sweep.tasks_dir)
    limit = sweep.effective_limit
    calib_sha = file_sha256(sweep.calibration_text) if sweep.calibration_text else None

    def make(arm: Arm, point):
        recipe = None if point is None else point.recipe
        calibration = None
        if recipe is not None and recipe.calib is not None:
            calibration = {"text_sha256": calib_sha, **dict(recipe.calib)}
        ident = cell_identity(arm=arm, model_hash=hashes[arm.name], recipe=recipe,
                              bits=None if point is None else point.bits, tasks=sweep.tasks, task_data=task_data,
                              limit=limit, calibration=calibration, eval_settings=sweep.eval, device=sweep.device,
                              dtype=sweep.dtype, cpu_threads=cpu_threads)
        return CellSpec(key=key_of(ident), identity=ident, arm=arm.name, attention=arm.attention,
                        model_path=str(arm.path), recipe=recipe, entry="fp" if point is None else point.entry,
                        bits=None if point is None else point.bits, label="FP" if point is None else point.label,
                        calib_seed=None if point is None else point.calib_seed, tasks=list(sweep.tasks),
                        limit=limit, calibration_text=str(sweep.calibration_text) if calibration else None,
                        device=sweep.device, dtype=sweep.dtype, eval=dict(sweep.eval),
                        tasks_dir=str(sweep.tasks_dir), sweep=sweep.name)

    cells = [make(a, None) for a in sweep.arms]
    cells += [make(a, p) for p in sweep.points for a in sweep.arms]
    keys = [c.key for c in cells]
    assert len(set(keys)) == len(keys), "two cells of one sweep share a key"
    return cells


def manifest(sweep: Sweep, cells: list[CellSpec]) -> dict:
    """What `sweeps/<name>.json` records: the sweep's settings and its grid of cell keys (for tables)."""
    return {
        "name": sweep.name,
        "source": sweep.source,
        "description": sweep.description,
        "arms": [a.to_dict() for a in sweep.arms],
        "baseline": sweep.baseline,
        "compare": sweep.compare,
        "tasks": sweep.tasks,
        "limit": sweep.effective_limit,
        "limit_note": sweep.limit_note(),
        "calib_note": sweep.calib_note(),
        "calib_seeds": sweep.calib_seeds,
        "device": sweep.device,
        "dtype": sweep.dtype,
        "recipes": sweep.entries,
        "cells": [{"key": c.key, "arm": c.arm, "recipe": c.entry, "bits": c.bits, "label": c.label,
                   "calib_seed": c.calib_seed} for c in cells],
    }
