"""Plots from stored cells: each task metric against bits, every arm, one line per recipe.

    qbench plot RESULTS_DIR   ->  RESULTS_DIR/plots/metrics_vs_bits.png   (all panels)
                                  RESULTS_DIR/plots/<task>_<metric>.png   (one panel each)
                                  (plots/<sweep>/ for a `sweeps/<sweep>.json` manifest)

x: weight bits (log2 axis: 2, 3, 4, 8); y: accuracy in percent, or perplexity on a log axis.
Colour = recipe, line style and marker = arm (in arm order: solid circles, dashed triangles,
dotted squares, ...); the full-precision values are horizontal lines (grey, same styles). Error
bars: the 95 % interval of each value, the tables' paired bootstrap over items where the cells
have per-item results, else +- 1.96 stored standard errors (none without either). A recipe with
one width (a weight+activation point) is a single marker. Missing or failed cells (and
infinite perplexities, which a log axis cannot show) leave gaps and are counted in the title.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from .cells import Grid, ReportError, is_accuracy, metric_label
from .compare import Analysis

_STYLES = [("-", "o"), ("--", "^"), (":", "s"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 3)), "P")]


def _style(grid: Grid, arm: str) -> dict:
    ls, marker = _STYLES[[a.name for a in grid.arms].index(arm) % len(_STYLES)]
    return {"linestyle": ls, "marker": marker}


def _points(grid: Grid, analysis: Analysis, recipe: dict, arm: str, task: str, metric: str):
    xs, ys, errs, gaps = [], [], [[], []], 0
    scale = 100 if is_accuracy(metric) else 1
    for label, b in grid.columns(recipe["name"]):
        if b is None:   # no weight width (KV cache, attention maps): not on this plot's axis
            continue
        entry = grid.entry(arm, recipe["name"], label)
        v, _ = entry.value(task, metric)
        if v is None or not math.isfinite(v) or (not is_accuracy(metric) and v <= 0):
            gaps += 1
            continue
        lo, hi = analysis.value_interval(entry, task, metric) or (v, v)
        xs.append(b)
        ys.append(v * scale)
        errs[0].append(max(0.0, (v - lo) * scale))
        errs[1].append(max(0.0, (hi - v) * scale))
    return xs, ys, errs, gaps


def _panel(ax, grid: Grid, analysis: Analysis, task: str, metric: str, colours: dict) -> None:
    gaps = 0
    for recipe in grid.recipes:
        for a in grid.arms:
            xs, ys, errs, g = _points(grid, analysis, recipe, a.name, task, metric)
            gaps += g
            if xs:
                ax.errorbar(xs, ys, yerr=errs, color=colours[recipe["name"]], capsize=2, elinewidth=0.8,
                            label=f"{recipe['name']} {a.label}", **_style(grid, a.name))
    for a in grid.arms:
        v, _ = grid.fp(a.name).value(task, metric)
        if v is not None and math.isfinite(v) and (is_accuracy(metric) or v > 0):
            ax.axhline(v * 100 if is_accuracy(metric) else v, color="grey", linewidth=1,
                       linestyle=_style(grid, a.name)["linestyle"], label=f"full precision {a.label}")
    ax.set_xscale("log", base=2)
    widths = [b for b in grid.widths() if b is not None]
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
    handles += [Line2D([], [], color="black", label=a.label, **_style(grid, a.name)) for a in grid.arms]
    handles += [Line2D([], [], color="grey", linestyle=_style(grid, a.name)["linestyle"], label=f"FP {a.label}")
                for a in grid.arms]
    fig_or_ax.legend(handles=handles, fontsize=8, **kw)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_plots(grid: Grid, analysis: Analysis | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = grid.rows()
    if not rows or not grid.recipes:
        raise ReportError(f"{grid.root}: nothing to plot (no task metrics or no recipes in the grid)")
    analysis = analysis or Analysis(grid)
    out_dir = grid.out_dir("plots")
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = _colours(grid)
    written = []
    ncols = min(3, len(rows))
    nrows = math.ceil(len(rows) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.9 * nrows), squeeze=False)
    for ax, (task, metric) in zip(axes.flat, rows):
        _panel(ax, grid, analysis, task, metric, colours)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    _legend(fig, grid, colours, loc="lower center", ncol=min(8, len(grid.recipes) + 2 * len(grid.arms)), bbox_to_anchor=(0.5, 0))
    fig.suptitle(f"{grid.caption()}", fontsize=10)
    legend_rows = math.ceil((len(grid.recipes) + 2 * len(grid.arms)) / min(8, len(grid.recipes) + 2 * len(grid.arms)))
    fig.tight_layout(rect=(0, 0.03 + 0.025 * legend_rows, 1, 0.96))
    path = out_dir / "metrics_vs_bits.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    for task, metric in rows:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        _panel(ax, grid, analysis, task, metric, colours)
        _legend(ax, grid, colours, loc="best", ncol=2)
        fig.tight_layout()
        path = out_dir / f"{_safe(task)}_{_safe(metric)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
