"""`qbench diagnose`: Table 2 diagnostics of a pair (Markdown, CSV, PNG, JSON).

    qbench diagnose SOFTMAX_DIR SOFTPICK_DIR [--text PATH] [--samples N --seq-len T --seed S]
                    [--subsamples K] [--results RESULTS_DIR] [--out DIR]
    qbench diagnose SWEEP.yaml [...]        # the sweep file's `pair` (and its results folder)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import paths
from .api import DEFAULT_TEXT, DEFAULTS

DTYPES = ("float32", "bfloat16", "float16")


def pair_from_sweep(sweep_file: Path) -> tuple[Path, Path, Path | None]:
    """(softmax dir, softpick dir, results dir if one exists) of a sweep file with a softmax and a
    softpick arm (read as `qbench sweep` reads them; raises SweepError)."""
    from ..sweep.sweepfile import SweepError, sweep_arms

    arms, results = sweep_arms(sweep_file)
    by_name = {name: path for name, path, _ in arms}
    if not {"softmax", "softpick"} <= set(by_name):
        raise SweepError(sweep_file, "arms", f"diagnose needs a softmax and a softpick arm, got {sorted(by_name)}")
    return by_name["softmax"], by_name["softpick"], results


def cmd_diagnose(args) -> int:
    import torch

    from .api import diagnose
    from .output import markdown_table, write_diagnostics

    results = args.results
    if len(args.pair) == 1:
        sweep_file = Path(args.pair[0])
        if not sweep_file.is_file():
            print(f"qbench diagnose: {sweep_file} is not a sweep file; give a sweep YAML or two checkpoint folders",
                  file=sys.stderr)
            return 2
        try:
            softmax, softpick, sweep_results = pair_from_sweep(sweep_file)
        except ValueError as err:  # SweepError included
            print(f"qbench diagnose: error: {err}", file=sys.stderr)
            return 2
        results = results or sweep_results
    elif len(args.pair) == 2:
        softmax, softpick = args.pair
    else:
        print("qbench diagnose: give SOFTMAX_DIR SOFTPICK_DIR or one sweep YAML", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else (Path(results) / "diagnostics" if results else
                                           paths.DATA_DIR / "diagnostics")
    t0 = time.time()
    try:
        result = diagnose(softmax, softpick, device=args.device, dtype=getattr(torch, args.dtype), text=args.text,
                          samples=args.samples, seq_len=args.seq_len, seed=args.seed, subsamples=args.subsamples,
                          results=results, attention=args.attention, chunk=args.chunk, batch_size=args.batch_size,
                          include_first_query=not args.exclude_first_query)
    except ValueError as err:
        print(f"qbench diagnose: {err}", file=sys.stderr)
        return 2
    files = write_diagnostics(result, out)
    print(markdown_table(result))
    print(f"({result['sample']['samples']} x {result['sample']['seq_len']} tokens from {result['sample']['text']}; "
          f"value ± sd over {result['sample']['subsamples']} sub-samples; {time.time() - t0:.1f}s)")
    for kind, path in files.items():
        print(f"{kind:9s} {path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "diagnose", help="sink rate, kurtosis, activation extremes and sparsity of a pair (paper Table 2)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pair", nargs="+", metavar="PATH", help="SOFTMAX_DIR SOFTPICK_DIR, or one sweep YAML file")
    p.add_argument("--text", default=str(DEFAULT_TEXT),
                   help="held-out text (documents separated by a line holding only U+241E; .gz or plain); "
                        "default: the bundled pair's held-out eval split")
    p.add_argument("--samples", type=int, default=DEFAULTS["samples"], help="windows (default %(default)s)")
    p.add_argument("--seq-len", type=int, default=DEFAULTS["seq_len"], help="tokens per window (default %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="which documents start the windows")
    p.add_argument("--subsamples", type=int, default=DEFAULTS["subsamples"],
                   help="groups of windows for the spread (default %(default)s; must divide --samples)")
    p.add_argument("--results", help="a sweep's results folder: adds per-layer quantization error from its cells")
    p.add_argument("--out", help="output folder (default RESULTS/diagnostics with --results, else DATA_DIR/diagnostics)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default float32)")
    p.add_argument("--attention", choices=("auto", "maps", "chunked"), default=DEFAULTS["attention"],
                   help="attention statistics from full maps or from q/k in row chunks (auto: maps when small)")
    p.add_argument("--chunk", type=int, default=DEFAULTS["chunk"], help="query rows per chunk (chunked path)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="windows per forward pass")
    p.add_argument("--exclude-first-query", action="store_true",
                   help="leave query position 0 out of the sink average (default: included, as Gu et al.)")
    p.set_defaults(func=cmd_diagnose)
