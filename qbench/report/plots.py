"""Plots from stored cells: each task metric against bits, both models, one line per recipe.

    qbench plot RESULTS_DIR   ->  RESULTS_DIR/plots/metrics_vs_bits.png   (all panels)
                                  RESULTS_DIR/plots/<task>_<metric>.png   (one panel each)

x: weight bits (log2 axis: 2, 3, 4, 8); y: accuracy in percent, or perplexity on a log axis.
Colour = recipe, line style = model (softmax solid with circles, softpick dashed with
triangles); the full-precision values are horizontal lines (grey, same styles). A recipe with
one width (a weight+activation point) is a single marker. Missing or failed cells (and
infinite perplexities, which a log axis cannot show) leave gaps and are counted in the title.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from .cells import KINDS, Grid, is_accuracy, load_grid, metric_label

STYLE = {"softmax": {"linestyle": "-", "marker": "o"}, "softpick": {"linestyle": "--", "marker": "^"}}


def _points(grid: Grid, recipe: dict, kind: str, task: str, metric: str):
    xs, ys, gaps = [], [], 0
    for b in sorted(recipe["bits"]):
        v, _ = grid.entry(kind, recipe["name"], b).value(task, metric)
        if v is None or not math.isfinite(v) or (not is_accuracy(metric) and v <= 0):
            gaps += 1
            continue
        xs.append(b)
        ys.append(v * 100 if is_accuracy(metric) else v)
    return xs, ys, gaps


def _panel(ax, grid: Grid, task: str, metric: str, colours: dict) -> None:
    gaps = 0
    for recipe in grid.recipes:
        for kind in KINDS:
            xs, ys, g = _points(grid, recipe, kind, task, metric)
            gaps += g
            if xs:
                ax.plot(xs, ys, color=colours[recipe["name"]], label=f"{recipe['name']} {kind}", **STYLE[kind])
    for kind in KINDS:
        v, _ = grid.baseline(kind).value(task, metric)
        if v is not None and math.isfinite(v) and (is_accuracy(metric) or v > 0):
            ax.axhline(v * 100 if is_accuracy(metric) else v, color="grey", linewidth=1,
                       linestyle=STYLE[kind]["linestyle"], label=f"full precision {kind}")
    ax.set_xscale("log", base=2)
    widths = sorted({b for r in grid.recipes for b in r["bits"]})
    ax.set_xticks(widths)
    ax.set_xticklabels([str(b) for b in widths])
    ax.xaxis.set_minor_locator(__import__('matplotlib').ticker.NullLocator())
    ax.set_xlabel("weight bits")
    if is_accuracy(metric):
        ax.set_ylabel("accuracy (%)")
    else:
        ax.set_yscale("log")
        ax.set_ylabel(metric.replace("_", " "))
    title = metric_label(task, metric)
    if gaps:
        title += f"  ({gaps} missing/failed/inf)"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)


def _colours(grid: Grid) -> dict:
    import matplotlib

    # grey is left out: it draws the full-precision lines
    if len(grid.recipes) <= 9:
        cmap, order = matplotlib.colormaps["tab10"], [i for i in range(10) if i != 7]
    else:   # the strong hues of tab20 first, then their light versions
        cmap = matplotlib.colormaps["tab20"]
        order = [i for i in range(0, 20, 2) if i != 14] + [i for i in range(1, 20, 2) if i != 15]
    return {r["name"]: cmap(order[i % len(order)]) for i, r in enumerate(grid.recipes)}


def _legend(fig_or_ax, grid: Grid, colours: dict, **kw):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[r["name"]], linewidth=2, label=r["name"]) for r in grid.recipes]
    handles += [Line2D([], [], color="black", label=k, **STYLE[k]) for k in KINDS]
    handles += [Line2D([], [], color="grey", linestyle=STYLE[k]["linestyle"], label=f"FP {k}") for k in KINDS]
    fig_or_ax.legend(handles=handles, fontsize=8, **kw)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_plots(results_dir) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = load_grid(results_dir)
    out_dir = Path(results_dir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = grid.rows()
    if not rows or not grid.recipes:
        raise ValueError(f"{results_dir}: nothing to plot (no task metrics or no recipes in the grid)")
    colours = _colours(grid)
    written = []
    ncols = min(3, len(rows))
    nrows = math.ceil(len(rows) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.9 * nrows), squeeze=False)
    for ax, (task, metric) in zip(axes.flat, rows):
        _panel(ax, grid, task, metric, colours)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    _legend(fig, grid, colours, loc="lower center", ncol=min(8, len(grid.recipes) + 4), bbox_to_anchor=(0.5, 0))
    fig.suptitle(f"{grid.caption()}", fontsize=10)
    legend_rows = math.ceil((len(grid.recipes) + 4) / min(8, len(grid.recipes) + 4))
    fig.tight_layout(rect=(0, 0.03 + 0.025 * legend_rows, 1, 0.96))
    path = out_dir / "metrics_vs_bits.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    for task, metric in rows:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        _panel(ax, grid, task, metric, colours)
        _legend(ax, grid, colours, loc="best", ncol=2)
        fig.tight_layout()
        path = out_dir / f"{_safe(task)}_{_safe(metric)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
