"""Per-layer weight quantization error read from a sweep's stored cells.

A cell (results/<sweep>/cells/<key>.json) holds `model` {arm, attention, hash, ...} (old cells:
{kind, hash}; the kind is the arm), `recipe`, `bits` and a
`quant_report` whose `layers` list has one entry per quantized linear layer with its `name` and
`weight_error` (||W_q - W||_F / ||W||_F; see qbench/quant/core.py). For each (model, recipe,
bits) this gives, per transformer layer, the error over that layer's linear layers combined as
sqrt(mean of squared errors) (the unweighted RMS of the relative errors), and per module.
Cells of other checkpoints (a different content hash) are skipped.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

LAYER_RE = re.compile(r"layers\.(\d+)\.(.+)$")


def cells_dir(results) -> Path:
    results = Path(results)
    if (results / "cells").is_dir():
        return results / "cells"
    if results.is_dir():
        return results
    from .collect import DiagnosticsError

    raise DiagnosticsError(f"results folder not found: {results} (--results)")


def _layer_errors(report: dict) -> dict[str, float]:
    """{module name: relative weight error} from a cell's quant report (qbench.quant.QuantReport)."""
    return {layer["name"]: float(layer["weight_error"]) for layer in report.get("layers") or []
            if math.isfinite(layer["weight_error"])}


def read_quant_errors(results, hashes: dict[str, str] | None = None, num_layers: int | None = None) -> dict:
    """{"source", "rows": [{model, recipe, bits, per_layer [L], by_module, overall, cell}], "skipped"}.

    `hashes`: {arm: content hash}; cells whose model hash differs are skipped. One row per
    (model, recipe, bits): cells that differ only in tasks or limits share their quantization,
    the first cell in key order is used.
    """
    folder = cells_dir(results)
    rows, seen, skipped = [], set(), {"other_checkpoint": 0, "no_report": 0, "unreadable": 0}
    for path in sorted(folder.glob("*.json")):
        try:
            cell = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            skipped["unreadable"] += 1
            continue
        kind, model_hash = cell["model"].get("arm") or cell["model"].get("kind"), cell["model"]["hash"]
        if hashes and hashes.get(kind) not in (None, model_hash):
            skipped["other_checkpoint"] += 1
            continue
        errors = _layer_errors(cell.get("quant_report") or {})
        if not errors:
            skipped["no_report"] += 1
            continue
        key = (kind, cell["recipe"]["name"], cell["bits"])
        if key in seen:
            continue
        seen.add(key)
        by_layer: dict[int, list[float]] = {}
        for name, err in errors.items():
            m = LAYER_RE.search(name)
            if m:
                by_layer.setdefault(int(m.group(1)), []).append(err)
        n = num_layers if num_layers is not None else (max(by_layer) + 1 if by_layer else 0)
        per_layer = [math.sqrt(sum(e * e for e in by_layer[i]) / len(by_layer[i])) if i in by_layer else float("nan")
                     for i in range(n)]
        overall = (cell.get("quant_report") or {}).get("weight_error")
        rows.append({"model": kind, "recipe": key[1], "bits": key[2], "per_layer": per_layer, "by_module": errors,
                     "overall": float(overall) if isinstance(overall, (int, float)) else None, "cell": path.name})
    rows.sort(key=lambda r: (str(r["recipe"]), -(r["bits"] or 0), str(r["model"])))
    return {"source": str(folder), "rows": rows, "skipped": skipped}
