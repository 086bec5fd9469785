"""`qbench table RESULTS_DIR` and `qbench plot RESULTS_DIR`: tables and plots from stored cells."""
from __future__ import annotations

import sys

from ..stats import CORRECTIONS
from ..stats.multiple import DEFAULT


def _common(p) -> None:
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="a results folder, e.g. results/full")
    p.add_argument("--sweep", metavar="NAME", default=None,
                   help="which sweep of the folder (manifest sweeps/NAME.json or sweep.json); "
                        "default: the only one")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="render even when cell files or per-item sidecars are damaged (named on stderr and "
                        "in the captions; damaged cells show as 'corrupt')")
    p.add_argument("--correction", choices=sorted(CORRECTIONS), default=DEFAULT,
                   help="multiple-comparison correction over each family of tests: bh = Benjamini-Hochberg "
                        "false discovery rate (default), holm = Holm family-wise error rate")


def register(subparsers) -> None:
    t = subparsers.add_parser(
        "table", help="tables (paper layout, deltas, summary) from a sweep's stored cells",
        description="Write RESULTS_DIR/tables/{paper,deltas,summary}.{md,tex,csv} (tables/NAME/ for a "
                    "sweeps/NAME.json manifest) from the stored cells (nothing is computed) and print the "
                    "summary. Missing cells show as '—', failed ones as 'failed'. Damaged cell files or "
                    "sidecars are named and the command exits 2, unless --allow-incomplete.")
    _common(t)
    t.set_defaults(func=cmd_table)
    p = subparsers.add_parser(
        "plot", help="accuracy and perplexity against bits from a sweep's stored cells (PNG)",
        description="Write RESULTS_DIR/plots/*.png: one panel per task metric, every arm, one line per recipe, "
                    "error bars = 95 % intervals.")
    _common(p)
    p.set_defaults(func=cmd_plot)


def _load(args):
    from .cells import load_grid
    from .compare import Analysis

    grid = load_grid(args.results_dir, sweep=args.sweep, allow_incomplete=args.allow_incomplete)
    for _, message in grid.problems:
        print(f"qbench {args.command}: warning: {message} (rendered anyway: --allow-incomplete)", file=sys.stderr)
    return grid, Analysis(grid, args.correction)


def cmd_table(args) -> int:
    from .tables import summary_screen, write_tables

    grid, analysis = _load(args)
    written = write_tables(grid, analysis)
    print(summary_screen(grid, analysis))
    print(f"tables: {grid.out_dir('tables')}/ ({', '.join(sorted(written))})")
    return 0


def cmd_plot(args) -> int:
    from .plots import write_plots

    grid, analysis = _load(args)
    written = write_plots(grid, analysis)
    print(f"plots: {written[0].parent}/ ({len(written)} PNG files, all panels in {written[0].name})")
    return 0
