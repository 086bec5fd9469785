"""The result store: one JSON file per cell, `RESULTS_DIR/cells/<key>.json`, written atomically.

The store is the only state the runner shares between processes (and, later, machines): a
cell file appears complete or not at all (tmp file in the same folder, fsync, os.replace,
fsync of the folder), so a crash or `kill -9` at any moment leaves either the old file, the
new file, or a stray `.<key>.json.<pid>.tmp` that readers ignore and `clean_tmp` removes.
Two processes that compute the same cell by accident both write whole files; the last
rename wins and nothing is ever half-written.

Beside the cells, `RESULTS_DIR/sweep.json` (the manifest) records the latest expansion of the
sweep file: its settings and the list of cell keys that make up the grid. Tables read it to
know which cells belong to the grid (and so which are missing); cells of older expansions
stay in `cells/` and are simply not listed.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from ..errors import QBenchError
from ..files import atomic_write_text, make_writable_dir

CELLS = "cells"
MANIFEST = "sweep.json"
KEY_RE = re.compile(r"^[0-9a-f]{16,64}$")
STATUSES = ("done", "failed")


class StoreError(QBenchError, RuntimeError):
    """The results folder cannot be used (not writable, not a folder, ...)."""


def _jsonable(value):
    """Non-finite floats become the strings 'inf', '-inf', 'nan' (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:  # numpy / torch scalar
        return _jsonable(value.item())
    return value


def dumps(obj) -> str:
    return json.dumps(_jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """Cells of one sweep under `root` (= RESULTS_DIR)."""

    def __init__(self, root):
        self.root = Path(root)
        self.cells_dir = self.root / CELLS

    # ------------------------------------------------------------------ setup
    def ensure_writable(self) -> None:
        """Create the folders and prove that a file can be written there; raises StoreError."""
        try:
            make_writable_dir(self.cells_dir)
        except OSError as err:
            raise StoreError(f"results folder {self.root} cannot be created or written: "
                             f"{err.strerror or err}") from None

    def clean_tmp(self) -> int:
        """Remove tmp files left by processes that no longer run (a killed sweep); returns the count."""
        removed = 0
        if not self.cells_dir.is_dir():
            return 0
        for tmp in self.cells_dir.glob(".*.tmp"):
            parts = tmp.name.rsplit(".", 2)   # .<key>.json . <pid> . tmp
            try:
                pid = int(parts[-2])
            except (ValueError, IndexError):
                continue
            if not _pid_alive(pid):
                try:
                    tmp.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    # ------------------------------------------------------------------ cells
    def path(self, key: str) -> Path:
        if not KEY_RE.match(key):
            raise ValueError(f"not a cell key: {key!r}")
        return self.cells_dir / f"{key}.json"

    def write(self, record: dict) -> Path:
        if record.get("status") not in STATUSES:
            raise ValueError(f"cell status must be one of {STATUSES}, got {record.get('status')!r}")
        path = self.path(record["key"])
        atomic_write_text(path, dumps(record))
        return path

    def read(self, key: str) -> dict | None:
        """The stored record of `key`, or None when there is none (or it is unreadable)."""
        path = self.path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            return None   # cannot happen with atomic writes; treat as missing so it is recomputed
        if not isinstance(record, dict) or record.get("key") != key or record.get("status") not in STATUSES:
            return None
        return record

    def keys(self) -> list[str]:
        if not self.cells_dir.is_dir():
            return []
        return sorted(p.stem for p in self.cells_dir.glob("*.json") if KEY_RE.match(p.stem))

    def records(self) -> dict[str, dict]:
        out = {}
        for key in self.keys():
            record = self.read(key)
            if record is not None:
                out[key] = record
        return out

    # ------------------------------------------------------------------ manifest
    def write_manifest(self, manifest: dict) -> None:
        atomic_write_text(self.root / MANIFEST, dumps(manifest))

    def read_manifest(self) -> dict | None:
        try:
            return json.loads((self.root / MANIFEST).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
