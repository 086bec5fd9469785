"""Loss curves of training runs: `qbench plot-training RUN [RUN ...] --out curves.png`.

A RUN is a folder `qbench train` wrote: one model (train_log.csv in it) or a pair (softmax/ and
softpick/ in it, each with its train_log.csv). One panel of training loss against tokens seen
(raw per-step values faint, a moving average over --smooth steps on top), one of the learning
rate; the runs' held-out token perplexities (train_summary.json, where present) go into the legend.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ..errors import QBenchError
from .train import LOG_FILE, SUMMARY_FILE


class CurveError(QBenchError, ValueError):
    """A run folder without a readable training log."""


def find_runs(paths: list[Path]) -> dict[str, Path]:
    """label -> folder holding train_log.csv (a pair folder gives '<name>/softmax', '<name>/softpick')."""
    runs = {}
    for path in map(Path, paths):
        if (path / LOG_FILE).is_file():
            runs[path.name] = path
            continue
        found = [path / k for k in ("softmax", "softpick") if (path / k / LOG_FILE).is_file()]
        if not found:
            raise CurveError(f"{path}: no {LOG_FILE} in it (nor in softmax/ or softpick/): not a `qbench train` run")
        runs.update({f"{path.name}/{f.name}": f for f in found})
    return runs


def read_log(folder: Path) -> dict[str, list[float]]:
    """The columns of folder/train_log.csv as floats (errors name the file, row and field)."""
    path = folder / LOG_FILE
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise CurveError(f"{path}: empty")
    header, data = rows[0], rows[1:]
    missing = [c for c in ("step", "tokens", "loss", "lr") if c not in header]
    if missing:
        raise CurveError(f"{path}: no column {', '.join(missing)} (header: {', '.join(header)})")
    where = {c: header.index(c) for c in ("step", "tokens", "loss", "lr")}
    columns = {c: [] for c in where}
    for n, row in enumerate(data, start=2):
        for c, i in where.items():
            try:
                columns[c].append(float(row[i]))
            except (ValueError, IndexError):
                raise CurveError(f"{path}: row {n}, field {c}: not a number ({row!r})") from None
    if not columns["step"]:
        raise CurveError(f"{path}: no training steps logged")
    return columns


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _heldout(folder: Path) -> str:
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return ""
    ppl = (summary.get("heldout") or {}).get("perplexity")
    return f", held-out ppl {ppl:.2f}" if isinstance(ppl, (int, float)) and math.isfinite(ppl) else ""


def plot_runs(runs: dict[str, Path], out: Path, smooth: int = 50) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = {label: read_log(folder) for label, folder in runs.items()}
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for n, (label, log) in enumerate(logs.items()):
        colour = f"C{n}"
        tokens = [t / 1e6 for t in log["tokens"]]
        ax_loss.plot(tokens, log["loss"], color=colour, alpha=0.2, linewidth=0.6)
        ax_loss.plot(tokens, moving_average(log["loss"], smooth), color=colour, linewidth=1.5,
                     label=f"{label} ({len(tokens)} steps, last {smooth}-step mean "
                           f"{sum(log['loss'][-smooth:]) / len(log['loss'][-smooth:]):.3f}{_heldout(runs[label])})")
        ax_lr.plot(tokens, log["lr"], color=colour, linewidth=1)
    ax_loss.set_ylabel("training loss (nats/token)")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("tokens seen (millions)")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
