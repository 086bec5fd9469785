"""INTEGRATION SHIM - to be replaced by the integrator's store (qbench/sweep/store.py), then deleted.

The report reads the store through these three names only:
  - CorruptCell            -> qbench.sweep.store.CorruptCell (a StoreError)
  - read_cell(store, key)  -> store.read(key)           (raises CorruptCell for a damaged cell file)
  - read_items(store, rec) -> store.read_items(rec)     (the sidecar's `tasks` mapping after its sha256
                                                          is verified; CorruptCell for a damaged file)
They follow /work/coord/INTERFACES.md ("Record format", "Per-item sidecar"). At integration:
`from ..sweep.store import CorruptCell` in cells.py and call the two Store methods.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import zlib

from ..sweep.store import STATUSES, Store, StoreError


class CorruptCell(StoreError):
    """A cell file or its per-item sidecar is damaged (not valid, truncated, wrong checksum)."""


def read_cell(store: Store, key: str) -> dict | None:
    """The record of `key`, None when there is no file; CorruptCell when the file is damaged."""
    path = store.path(key)
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCell(f"{path}: not a valid cell file (truncated or damaged: {err})") from None
    if not isinstance(record, dict) or record.get("key") != key or record.get("status") not in STATUSES:
        raise CorruptCell(f"{path}: not a cell record of key {key} with a status in {STATUSES}")
    return record


def read_items(store: Store, record: dict) -> dict | None:
    """The sidecar's `tasks` mapping of a record, None when the record has no sidecar."""
    ref = record.get("items")
    if not ref:
        return None
    path = store.cells_dir / ref["file"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptCell(f"{path}: per-item sidecar named by cell {record['key']} is missing") from None
    if hashlib.sha256(data).hexdigest() != ref.get("sha256"):
        raise CorruptCell(f"{path}: sha256 does not match the one in cell {record['key']} (damaged)")
    try:
        sidecar = json.loads(gzip.decompress(data).decode("utf-8"))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCell(f"{path}: not a valid gzip of JSON (truncated or damaged: {err})") from None
    if not isinstance(sidecar, dict) or sidecar.get("key") != record["key"] or not isinstance(sidecar.get("tasks"), dict):
        raise CorruptCell(f"{path}: not the per-item sidecar of cell {record['key']}")
    return sidecar["tasks"]
