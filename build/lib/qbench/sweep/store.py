"""The result store of a results folder: one JSON file per cell, `DIR/cells/<key>.json`, its per-item
sidecar `DIR/cells/<key>.items.json.gz`, one manifest per sweep `DIR/sweeps/<name>.json`, and
per-cell claims `DIR/cells/<key>.claim`.

Writes are atomic (tmp file in the same folder, fsync, os.replace, fsync of the folder): a crash
or `kill -9` leaves the old file, the new one, or a stray `.<name>.<pid>.tmp` that readers
ignore and `clean_tmp` removes. The sidecar is written before its cell, and the cell records
the sidecar's sha256, so a cell never points at items that are not there.

Damage is never hidden: a cell file that cannot be parsed, is empty, belongs to another key, has
an unknown status, or claims `done` without metrics raises `CorruptCell` on read (and `scan`
reports it); so does a sidecar whose bytes do not match the hash its cell recorded. A corrupt
manifest is a StoreError naming the file, never "no manifest". The runner recomputes corrupt
cells; tables refuse to render over them unless asked.

Claims let several processes (sweeps started twice, on several hosts over a shared folder) work
on one folder without computing a cell twice: a process claims a cell before computing it
(`claim`, under an exclusive lock of `DIR/cells/.lock`), refreshes the claims it holds
(`heartbeat`), and releases them after writing the cell. A claim whose heartbeat is older than
STALE_SECONDS, or whose process is gone (same host), is taken over.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import json
import math
import os
import re
import socket
import time
from pathlib import Path

from ..errors import QBenchError
from ..files import atomic_write_bytes, atomic_write_text, make_writable_dir

CELLS = "cells"
SWEEPS = "sweeps"
LEGACY_MANIFEST = "sweep.json"
KEY_RE = re.compile(r"^[0-9a-f]{16,64}$")
STATUSES = ("done", "failed")
ITEMS_SUFFIX = ".items.json.gz"
ITEMS_SCHEMA = 1
STALE_SECONDS = 120.0      # a claim not refreshed for this long is taken over
HEARTBEAT_SECONDS = 15.0


class StoreError(QBenchError, RuntimeError):
    """The results folder cannot be used (not writable, not a folder, a corrupt manifest, ...)."""


class StoreFull(StoreError):
    """No space left on the device of the results folder: the sweep stops (nothing is half-written)."""


class CorruptCell(StoreError):
    """A stored cell file or its sidecar is damaged; `path` names it, `reason` says how."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


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


@contextlib.contextmanager
def _disk_errors(what: Path):
    """OSError of a write -> StoreFull (no space) or StoreError, naming the file."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFull(f"no space left on the device of {what}: the sweep stops here; every cell "
                            f"stored so far is complete; free some space and run the same command again") from None
        raise StoreError(f"cannot write {what}: {err.strerror or err}") from None


def check_metrics(metrics, tasks=()) -> str | None:
    """Why a done cell's metrics ({task: {metric: number}}, one entry per task it evaluated) are not
    usable, or None."""
    if not isinstance(metrics, dict) or not metrics:
        return "status done but no metrics"
    lacking = [t for t in tasks or () if not metrics.get(t)]
    if lacking:
        return f"status done but no metrics of {', '.join(lacking)} (incomplete)"
    for task, values in metrics.items():
        if not isinstance(values, dict) or not values:
            return f"status done but task {task!r} has no metrics"
        for name, v in values.items():
            if not (v is None or isinstance(v, (int, float)) or v in ("inf", "-inf", "nan")):
                return f"metric {task}/{name} is not a number: {v!r}"
            if not name.endswith("_stderr") and v is None:
                return f"metric {task}/{name} is null"
    return None


class Store:
    """Cells, sidecars, manifests and claims under `root` (= a results folder)."""

    def __init__(self, root):
        self.root = Path(root)
        self.cells_dir = self.root / CELLS
        self.sweeps_dir = self.root / SWEEPS

    # ------------------------------------------------------------------ setup
    def ensure_writable(self) -> None:
        """Create the folders and prove that a file can be written there; raises StoreError."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"results folder {self.root} is a file, not a folder")
        try:
            make_writable_dir(self.cells_dir)
            make_writable_dir(self.sweeps_dir)
        except OSError as err:
            raise StoreError(f"results folder {self.root} cannot be created or written: "
                             f"{err.strerror or err}") from None

    def clean_tmp(self) -> int:
        """Remove tmp files left by processes that no longer run (a killed sweep); returns the count."""
        removed = 0
        for folder in (self.cells_dir, self.sweeps_dir, self.root):
            if not folder.is_dir():
                continue
            for tmp in folder.glob(".*.tmp"):
                parts = tmp.name.rsplit(".", 2)   # .<name> . <pid> . tmp
                try:
                    pid = int(parts[-2])
                except (ValueError, IndexError):
                    continue
                if not _pid_alive(pid):
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
                        removed += 1
        return removed

    # ------------------------------------------------------------------ cells
    def path(self, key: str) -> Path:
        if not KEY_RE.match(key):
            raise ValueError(f"not a cell key: {key!r}")
        return self.cells_dir / f"{key}.json"

    def items_path(self, key: str) -> Path:
        return self.path(key).with_name(key + ITEMS_SUFFIX)

    def write(self, record: dict, items: dict | None = None) -> Path:
        """Store a cell (and first its per-item results, whose hash the cell then records)."""
        if record.get("status") not in STATUSES:
            raise ValueError(f"cell status must be one of {STATUSES}, got {record.get('status')!r}")
        problem = record["status"] == "done" and check_metrics(record.get("metrics"), record.get("tasks"))
        if problem:
            raise ValueError(f"cell {record['key']}: {problem}")
        path = self.path(record["key"])
        with _disk_errors(path):
            if items is not None:
                payload = {"schema": ITEMS_SCHEMA, "key": record["key"], "tasks": items}
                data = gzip.compress(json.dumps(_jsonable(payload), separators=(",", ":"), allow_nan=False).encode(),
                                     mtime=0)
                atomic_write_bytes(self.items_path(record["key"]), data)
                record = {**record, "items": {"file": self.items_path(record["key"]).name,
                                              "sha256": hashlib.sha256(data).hexdigest()}}
            atomic_write_text(path, dumps(record))
        return path

    def read(self, key: str) -> dict | None:
        """The stored record of `key`; None when there is none; CorruptCell when it is damaged."""
        path = self.path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            raise CorruptCell(path, f"unreadable ({err})") from None
        if not text.strip():
            raise CorruptCell(path, "empty file")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise CorruptCell(path, f"not valid JSON (truncated?): {err}") from None
        if not isinstance(record, dict):
            raise CorruptCell(path, "not a cell record (a JSON object)")
        if record.get("key") != key:
            raise CorruptCell(path, f"holds the cell {record.get('key')!r}, not {key}")
        if record.get("status") not in STATUSES:
            raise CorruptCell(path, f"unknown status {record.get('status')!r}")
        problem = record["status"] == "done" and check_metrics(record.get("metrics"), record.get("tasks"))
        if problem:
            raise CorruptCell(path, problem)
        return record

    def read_items(self, record: dict) -> dict | None:
        """The per-item results of a cell ({task: {doc_id, metrics}}), verified against the hash the
        cell recorded; None for a cell without a sidecar; CorruptCell when it is damaged or missing."""
        info = record.get("items")
        if not info:
            return None
        path = self.cells_dir / info["file"]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptCell(path, f"missing (cell {record['key']} records per-item results)") from None
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise CorruptCell(path, "content does not match the sha256 its cell recorded (damaged or replaced)")
        try:
            payload = json.loads(gzip.decompress(data))
        except (OSError, EOFError, ValueError) as err:
            raise CorruptCell(path, f"not a gzip JSON sidecar: {err}") from None
        if not isinstance(payload, dict) or payload.get("key") != record["key"] or payload.get("schema") != ITEMS_SCHEMA \
                or not isinstance(payload.get("tasks"), dict):
            raise CorruptCell(path, f"not the sidecar of cell {record['key']} (schema {ITEMS_SCHEMA})")
        for task, t in payload["tasks"].items():
            n = len(t.get("doc_id") or [])
            for metric, m in (t.get("metrics") or {}).items():
                if not isinstance(m, dict) or len(m.get("values") or []) != n:
                    raise CorruptCell(path, f"task {task} metric {metric}: values do not match its {n} doc ids")
        return payload["tasks"]

    def scan(self, keys) -> dict[str, tuple[str, str | None]]:
        """key -> (state, reason): state done | failed | missing | corrupt (the sidecar included)."""
        out = {}
        for key in keys:
            try:
                record = self.read(key)
                if record is not None and record["status"] == "done":
                    self.read_items(record)
            except CorruptCell as err:
                out[key] = ("corrupt", str(err))
                continue
            out[key] = ("missing", None) if record is None else (record["status"], None)
        return out

    def keys(self) -> list[str]:
        if not self.cells_dir.is_dir():
            return []
        return sorted(p.stem for p in self.cells_dir.glob("*.json") if KEY_RE.match(p.stem))

    def records(self) -> dict[str, dict]:
        """Every readable record (corrupt files are left out: `scan` names them)."""
        out = {}
        for key in self.keys():
            with contextlib.suppress(CorruptCell):
                record = self.read(key)
                if record is not None:
                    out[key] = record
        return out

    # ------------------------------------------------------------------ manifests
    def manifest_path(self, name: str) -> Path:
        return self.sweeps_dir / f"{name}.json"

    def write_manifest(self, manifest: dict) -> None:
        path = self.manifest_path(manifest["name"])
        with _disk_errors(path):
            self.sweeps_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, dumps(manifest))

    def manifest_names(self) -> list[str]:
        names = sorted(p.stem for p in self.sweeps_dir.glob("*.json")) if self.sweeps_dir.is_dir() else []
        legacy = self.root / LEGACY_MANIFEST
        if legacy.is_file():
            name = self._load_manifest(legacy).get("name", self.root.name)
            if name not in names:
                names.append(name)
        return names

    def manifest_file(self, name: str) -> Path:
        """The file holding sweep `name`'s manifest: `sweeps/<name>.json`, else the legacy `sweep.json`."""
        path = self.manifest_path(name)
        return path if path.is_file() or not (self.root / LEGACY_MANIFEST).is_file() else self.root / LEGACY_MANIFEST

    def read_manifest(self, name: str | None = None) -> dict | None:
        """The manifest of sweep `name` (None: the only one in the folder); None when there is none.
        Raises StoreError for a corrupt manifest or an ambiguous / unknown name."""
        names = self.manifest_names()
        if name is None:
            if not names:
                return None
            if len(names) > 1:
                raise StoreError(f"{self.root} holds the sweeps {names}: choose one with --sweep NAME")
            name = names[0]
        path = self.manifest_path(name)
        if path.is_file():
            return self._load_manifest(path)
        legacy = self.root / LEGACY_MANIFEST
        if legacy.is_file() and self._load_manifest(legacy).get("name", self.root.name) == name:
            return self._load_manifest(legacy)
        raise StoreError(f"{self.root} has no sweep named {name!r}; it holds {names or 'none'}")

    @staticmethod
    def _load_manifest(path: Path) -> dict:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StoreError(f"{path}: corrupt sweep manifest ({err}); rerun the sweep to rewrite it") from None
        if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
            raise StoreError(f"{path}: corrupt sweep manifest (no list of cells)")
        return data

    # ------------------------------------------------------------------ claims
    def claim_path(self, key: str) -> Path:
        return self.path(key).with_suffix(".claim")

    @contextlib.contextmanager
    def _locked(self):
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cells_dir / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def read_claim(self, key: str) -> dict | None:
        try:
            return json.loads(self.claim_path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    @staticmethod
    def claim_is_live(claim: dict | None) -> bool:
        if not claim:
            return False
        if time.time() - float(claim.get("heartbeat", 0)) > STALE_SECONDS:
            return False
        if claim.get("host") == socket.gethostname() and not _pid_alive(int(claim.get("pid", 0))):
            return False
        return True

    def claim(self, key: str, owner: str) -> dict | None:
        """Claim `key` for `owner`; None on success, else the live claim of another owner."""
        with self._locked():
            current = self.read_claim(key)
            if current and current.get("owner") != owner and self.claim_is_live(current):
                return current
            now = time.time()
            with _disk_errors(self.claim_path(key)):
                atomic_write_text(self.claim_path(key), json.dumps(
                    {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "started": now,
                     "heartbeat": now, "took_over": current.get("owner") if current else None}))
            return None

    def heartbeat(self, keys, owner: str) -> None:
        with self._locked():
            for key in keys:
                current = self.read_claim(key)
                if current and current.get("owner") == owner:
                    current["heartbeat"] = time.time()
                    atomic_write_text(self.claim_path(key), json.dumps(current))

    def release(self, key: str, owner: str) -> None:
        with self._locked():
            current = self.read_claim(key)
            if current and current.get("owner") == owner:
                with contextlib.suppress(FileNotFoundError):
                    self.claim_path(key).unlink()
