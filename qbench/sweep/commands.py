"""`qbench sweep SWEEP.yaml`: run a sweep (resumable; a rerun computes only what is missing or failed)."""
from __future__ import annotations

import argparse
import sys


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="run a sweep file: every (recipe, bits, model) cell plus the full-precision baselines",
        description="Expand a sweep file into cells and compute those the result store does not hold yet "
                    "(RESULTS/cells/<key>.json; a cell's key hashes everything that can change its numbers). "
                    "Everything is validated before any cell runs. Killing the sweep and running it again "
                    "resumes it; failed cells are retried. The sweep file format is described in "
                    "qbench/sweep/spec.py.")
    p.add_argument("sweep_file", metavar="SWEEP.yaml", help="sweep file, e.g. recipes/paper.yaml or recipes/full.yaml")
    p.add_argument("--results", default=None, metavar="DIR", help="results folder (default: results/<sweep name>)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="where cells run (default: the sweep file's `device`, else auto)")
    lim = p.add_mutually_exclusive_group()
    lim.add_argument("--limit", type=_positive, default=None, metavar="N",
                     help="examples per task, overriding the sweep file's limit and cpu_limit")
    lim.add_argument("--no-limit", action="store_true", help="all examples of every task, even on CPU")
    p.add_argument("--full-calib", action="store_true",
                   help="the recipes' own calibration batches even on CPU (ignore the sweep file's cpu_calib)")
    p.add_argument("--workers", type=_positive, default=1, metavar="N",
                   help="worker processes over disjoint cells; on CUDA one per GPU (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--dry-run", action="store_true", help="validate, list the cells and their state, compute nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the per-cell lines stay)")
    p.set_defaults(func=cmd_sweep)


def _fail(message: str) -> int:
    print(f"qbench sweep: error: {message}", file=sys.stderr)
    return 2


def cmd_sweep(args) -> int:
    from .runner import ModelSource, new_run_id, plan, run_cells, run_workers, summary_text
    from .spec import SweepError, expand, load_sweep, manifest
    from .store import Store

    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)   # lines appear as they happen, also through a pipe (tee)
    try:
        sweep = load_sweep(args.sweep_file, results_dir=args.results, device=args.device, limit=args.limit,
                           no_limit=args.no_limit, full_calib=args.full_calib, check_store=not args.dry_run)
    except SweepError as err:
        return _fail(str(err))
    cells = expand(sweep)
    store = Store(sweep.results_dir)
    p = plan(cells, store)
    todo = p.todo
    removed = store.clean_tmp()
    n_base = sum(1 for c in cells if c.recipe is None)
    print(f"sweep {sweep.name} ({sweep.source}): {len(cells)} cells ({n_base} full-precision baselines + "
          f"{len(cells) - n_base} recipe x bits x model) on {sweep.device} ({sweep.dtype})")
    print(f"pair: softmax {sweep.softmax}, softpick {sweep.softpick}")
    print(f"tasks: {', '.join(sweep.tasks)}; {sweep.limit_note()}")
    if sweep.calib_note():
        print(f"calibration: {sweep.calib_note()}")
    print(f"results: {sweep.results_dir}; {len(p.cached)} stored, {len(p.retry)} failed before (retried), "
          f"{len(p.pending)} to compute" + (f"; removed {removed} stray tmp files" if removed else ""))
    if args.dry_run:
        cached, retry = {c.key for c in p.cached}, {c.key for c in p.retry}
        for c in cells:
            state = "stored" if c.key in cached else ("failed, retry" if c.key in retry else "to compute")
            print(f"  {c.key}  {c.label:36s} {state}")
        return 0
    store.write_manifest(manifest(sweep, cells))
    run_id = new_run_id()
    try:
        if args.workers > 1 and len(todo) > 1:
            try:
                summary = run_workers(min(args.workers, len(todo)), sweep, todo, store, run_id=run_id,
                                      total=len(cells), cached=len(p.cached), progress=not args.no_progress)
            except ValueError as err:
                return _fail(str(err))
        else:
            source = ModelSource(sweep.softmax, sweep.softpick, sweep.dtype)
            summary = run_cells(todo, store, source, run_id=run_id, previous=p.previous, total=len(cells),
                                cached=len(p.cached), progress=not args.no_progress, desc=sweep.name)
    except KeyboardInterrupt:
        print("\ninterrupted: the finished cells are stored; run the same command again to resume",
              file=sys.stderr)
        return 130
    print(summary_text(summary, store))
    print(f"tables: qbench table {sweep.results_dir}   plots: qbench plot {sweep.results_dir}")
    return 0 if summary.ok else 1
