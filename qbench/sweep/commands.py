"""`qbench sweep SWEEP.yaml`: run a sweep (resumable; a rerun computes only what is missing, failed or
damaged). Exit status: 0 every cell done, 1 some cells failed, 2 the sweep could not run (a bad
sweep file or option, a full disk, corrupt cells found by --dry-run), 130 interrupted."""
from __future__ import annotations

import json
import sys

from .. import identity as code_identity
from ..cli import positive_float, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="run a sweep file: every (arm, recipe point) cell plus each arm's full-precision baseline",
        description="Expand a sweep file into cells and compute those the result store does not hold yet "
                    "(RESULTS/cells/<key>.json; a cell's key hashes everything that can change its numbers: "
                    "qbench/sweep/cells.py). Everything is validated before any cell runs. Killing the sweep and "
                    "running it again resumes it; failed and damaged cells are recomputed. Several sweeps (and "
                    "several processes) can share a results folder. The sweep file format is described in "
                    "qbench/sweep/sweepfile.py.")
    p.add_argument("sweep_file", metavar="SWEEP.yaml", help="sweep file, e.g. recipes/paper.yaml or recipes/full.yaml")
    p.add_argument("--results", default=None, metavar="DIR", help="results folder (default: results/<sweep name>)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="where cells run (default: the sweep file's `device`, else auto)")
    lim = p.add_mutually_exclusive_group()
    lim.add_argument("--limit", type=positive_int, default=None, metavar="N",
                     help="examples per task, overriding the sweep file's limit and cpu_limit")
    lim.add_argument("--no-limit", action="store_true", help="all examples of every task, even on CPU")
    p.add_argument("--full-calib", action="store_true",
                   help="the recipes' own calibration batches even on CPU (ignore the sweep file's cpu_calib)")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="local worker processes over disjoint cells; on CUDA one per GPU (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--cpu-threads", type=positive_int, default=None, metavar="N",
                   help="on CPU, the torch threads each cell computes with, which its key holds (GPTQ's weights "
                        "depend on it; default: this process's with one worker, the cores' share of each of "
                        "--workers N, --cpus-per-cell under Ray)")
    p.add_argument("--workers-per-gpu", type=positive_int, default=1, metavar="K",
                   help="on CUDA, K local workers share each GPU (for small models; default 1)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: this process or --workers processes; ray: one Ray task per cell (pip install "
                        "qbench[ray]; see --address)")
    ray = p.add_argument_group("Ray executor (--executor ray; qbench/sweep/ray_executor.py)")
    ray.add_argument("--address", default=None, metavar="ADDR",
                     help="Ray cluster to join (e.g. 10.0.0.1:6379 or auto); default: a local Ray instance")
    ray.add_argument("--ray-ship", choices=["path", "objects"], default=None,
                     help="how checkpoints and task data reach the workers: path (default: the same paths on every "
                          "node, e.g. a shared filesystem) or objects (through Ray's object store)")
    ray.add_argument("--cpus-per-cell", type=positive_float, default=None, metavar="N",
                     help="CPU cores each cell asks for (default 1; on CUDA a cell asks for one GPU as well)")
    ray.add_argument("--cell-timeout", type=positive_float, default=None, metavar="SECONDS",
                     help="a cell running longer is cancelled and stored as failed (default: no deadline)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, list the cells and their state (naming damaged files), compute nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the per-cell lines stay)")
    p.set_defaults(func=cmd_sweep)


def _check_executor(args) -> None:
    """Options of one executor given with the other: refused before the sweep file is read."""
    from .sweepfile import SweepError

    ray_only = {"--address": args.address, "--ray-ship": args.ray_ship, "--cpus-per-cell": args.cpus_per_cell,
                "--cell-timeout": args.cell_timeout}
    if args.executor == "ray" and args.workers > 1:
        raise SweepError("command line", "--workers", "is for the local executor; with --executor ray the "
                                                      "cluster's size says how many cells run at once")
    given = [name for name, value in ray_only.items() if value is not None]
    if args.executor != "ray" and given:
        raise SweepError("command line", ", ".join(given), "only with --executor ray")


def _stored_for_other_cpu_setups(cells, p, store, threads: int | None) -> dict[tuple, int]:
    """(thread count, CPU) -> how many of the cells to compute are stored, done, under that CPU
    thread count and CPU (qbench.identity.cpu_numerics) and otherwise the same identity (a store made
    with another --workers, or on another machine). Nothing on CUDA, whose keys hold neither (the
    store is then not read a second time)."""
    def without_cpu_setup(ident: dict) -> str:
        return json.dumps({**ident, "runtime": {k: v for k, v in ident["runtime"].items()
                                                if k not in ("cpu_threads", "cpu")}}, sort_keys=True, default=str)

    missing = {without_cpu_setup(c.identity) for c in cells if p.state[c.key][0] == "missing"}
    found: dict[tuple, int] = {}
    if threads is None or not missing:
        return found
    for record in store.records().values():
        ident = record.get("identity")
        if (record.get("status") == "done" and isinstance(ident, dict) and isinstance(ident.get("runtime"), dict)
                and "cpu_threads" in ident["runtime"] and without_cpu_setup(ident) in missing):
            other = (ident["runtime"]["cpu_threads"], ident["runtime"].get("cpu"))
            found[other] = found.get(other, 0) + 1
    return found


def _executor(args, sweep, n_todo: int):
    from .run import InProcess, Processes, worker_threads

    if args.executor == "ray":
        if n_todo == 0:
            return InProcess(sweep.dtype)   # every cell is stored: no cluster to join
        from .ray_executor import RayExecutor

        return RayExecutor(sweep, address=args.address, ship=args.ray_ship or "path",
                           cpus_per_cell=args.cpus_per_cell or 1, cell_timeout=args.cell_timeout)
    if args.workers > 1 and n_todo > 1:
        return Processes(min(args.workers, n_todo), sweep.device, sweep.dtype, log=print, per_gpu=args.workers_per_gpu,
                         threads=worker_threads(args.workers))   # the share the cells' keys hold
    return InProcess(sweep.dtype)


def cmd_sweep(args) -> int:
    from .cells import expand, manifest
    from .run import cell_threads, new_run_id, plan, run_cells, summary_text
    from .store import Store
    from .sweepfile import load_sweep

    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)   # lines appear as they happen, also through a pipe (tee)
    _check_executor(args)
    sweep = load_sweep(args.sweep_file, results_dir=args.results, device=args.device, limit=args.limit,
                       no_limit=args.no_limit, full_calib=args.full_calib, check_store=not args.dry_run)
    threads = cell_threads(sweep.device, args.executor, args.workers, args.cpus_per_cell, args.cpu_threads)
    cells = expand(sweep, cpu_threads=threads)
    store = Store(sweep.results_dir)
    p = plan(cells, store)
    removed = store.clean_tmp() if not args.dry_run else 0
    n_base = sum(1 for c in cells if c.is_baseline)
    corrupt = p.of("corrupt")
    print(f"sweep {sweep.name} ({sweep.source}): {len(cells)} cells ({n_base} full-precision baselines + "
          f"{len(cells) - n_base} recipe points x arms) on {sweep.device} ({sweep.dtype})")
    print("arms: " + ", ".join(f"{a.name} = {a.path} ({a.attention}{', forced' if a.forced else ''})"
                               for a in sweep.arms) + f"; baseline {sweep.baseline}; compare {sweep.compare}")
    print(f"tasks: {', '.join(sweep.tasks)}; {sweep.limit_note()}")
    if sweep.calib_note():
        print(f"calibration: {sweep.calib_note()}")
    print(f"results: {sweep.results_dir}; {len(p.of('done'))} stored, {len(p.of('failed'))} failed before (retried), "
          f"{len(corrupt)} damaged (recomputed), {len(p.of('missing'))} to compute"
          + (f"; removed {removed} stray tmp files" if removed else ""))
    for c in corrupt:
        print(f"  damaged: {p.state[c.key][1]}")
    here = code_identity.cpu_numerics()
    for (other, cpu), n in _stored_for_other_cpu_setups(cells, p, store, threads).items():
        if cpu == here:
            print(f"  note: {n} of the cells to compute are stored for {other} CPU thread(s) per cell (this run: "
                  f"{threads}); `--cpu-threads {other}` uses them")
        else:
            print(f"  note: {n} of the cells to compute are stored for another CPU ({cpu or 'not recorded'}, "
                  f"{other} thread(s) per cell; this machine: {here}): they are recomputed here")
    if args.dry_run:
        names = {"done": "stored", "failed": "failed, retry", "corrupt": "DAMAGED, recompute", "missing": "to compute"}
        for c in cells:
            print(f"  {c.key}  {c.describe:44s} {names[p.state[c.key][0]]}")
        return 2 if corrupt else 0
    store.write_manifest(manifest(sweep, cells))
    todo = p.todo
    executor = _executor(args, sweep, len(todo))
    try:
        summary = run_cells(todo, store, executor, run_id=new_run_id(), previous=p.previous, total=len(cells),
                            cached=len(p.of("done")), progress=not args.no_progress, desc=sweep.name)
    except KeyboardInterrupt:
        print("\ninterrupted: the finished cells are stored; run the same command again to resume", file=sys.stderr)
        return 130
    print(summary_text(summary, store))
    more = f" --sweep {sweep.name}" if len(store.manifest_names()) > 1 else ""
    print(f"tables: qbench table {sweep.results_dir}{more}   plots: qbench plot {sweep.results_dir}{more}")
    return 0 if summary.ok else 1
