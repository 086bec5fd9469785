"""`qbench table RESULTS_DIR` and `qbench plot RESULTS_DIR`: tables and plots from stored cells."""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    t = subparsers.add_parser(
        "table", help="tables (paper layout, deltas, summary) from a sweep's stored cells",
        description="Write RESULTS_DIR/tables/{paper,deltas,summary}.{md,tex,csv} from the stored cells "
                    "(nothing is computed) and print the summary. Missing cells show as '—', failed ones "
                    "as 'failed'.")
    t.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep's results folder, e.g. results/full")
    t.set_defaults(func=cmd_table)
    p = subparsers.add_parser(
        "plot", help="accuracy and perplexity against bits from a sweep's stored cells (PNG)",
        description="Write RESULTS_DIR/plots/*.png: one panel per task metric, both models, one line per recipe.")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep's results folder, e.g. results/full")
    p.set_defaults(func=cmd_plot)


def cmd_table(args) -> int:
    from .cells import load_grid
    from .tables import summary_screen, write_tables

    try:
        grid = load_grid(args.results_dir)
    except FileNotFoundError as err:
        print(f"qbench table: error: {err}", file=sys.stderr)
        return 2
    written = write_tables(args.results_dir, grid)
    print(summary_screen(args.results_dir, grid))
    folder = next(iter(written.values())).parent
    print(f"tables: {folder}/ ({', '.join(sorted(written))})")
    return 0


def cmd_plot(args) -> int:
    from .plots import write_plots

    try:
        written = write_plots(args.results_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"qbench plot: error: {err}", file=sys.stderr)
        return 2
    print(f"plots: {written[0].parent}/ ({len(written)} PNG files, all panels in {written[0].name})")
    return 0
