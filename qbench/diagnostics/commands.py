"""`qbench diagnose`: Table 2 diagnostics of one or more checkpoints (Markdown, CSV, PNG, JSON).

    qbench diagnose PATH [PATH ...] [--attention KIND[,KIND...]] [--label NAME ...]
                    [--text PATH] [--samples N --seq-len T --seed S] [--subsamples K]
                    [--results RESULTS_DIR] [--out DIR]
    qbench diagnose SWEEP.yaml [...]        # the sweep file's arms (or pair) and results folder

A PATH is any checkpoint qbench loads: a folder in the paper's format, a transformers folder,
a .gguf file, or hf:ORG/NAME. --attention forces a kind for all checkpoints or, comma-separated,
per checkpoint ("own" keeps a checkpoint's own). Everything is checked before any model is loaded:
the sample sizes, --seq-len against every model's positions, and --out (an existing file is refused).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import paths
from .api import DEFAULT_TEXT, DEFAULTS, arm_labels, check_sample, check_seq_len
from .collect import DiagnosticsError

DTYPES = ("float32", "bfloat16", "float16")


def arms_from_sweep(sweep_file: Path) -> tuple[list[tuple[str, str | None, str | None]], Path | None]:
    """([(path, attention, label)], results dir if one exists) of a sweep file's arms (or pair), read
    as `qbench sweep` reads them (extends: followed)."""
    from ..sweep.sweepfile import sweep_arms

    arms, results = sweep_arms(sweep_file)
    return [(str(path), attention, name) for name, path, attention in arms], results


def _forced(spec: str | None, n: int) -> list[str | None]:
    if spec is None:
        return [None] * n
    values = [None if v in ("own", "-", "") else v for v in spec.split(",")]
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise DiagnosticsError(f"--attention {spec}: give one kind, or one per checkpoint ({n})")
    return values


def cmd_diagnose(args) -> int:
    import torch

    from ..model import inspect_checkpoint
    from .api import diagnose
    from .output import check_out_dir, markdown_table, write_diagnostics
    from .quant_error import cells_dir

    results = args.results
    if len(args.paths) == 1 and Path(args.paths[0]).suffix in (".yaml", ".yml"):
        if not Path(args.paths[0]).is_file():
            raise DiagnosticsError(f"{args.paths[0]}: no such sweep file")
        arms, sweep_results = arms_from_sweep(Path(args.paths[0]))
        results = results or sweep_results
        if args.attention is not None:
            arms = [(p, a, label) for (p, _, label), a in zip(arms, _forced(args.attention, len(arms)))]
    else:
        arms = [(p, a, None) for p, a in zip(args.paths, _forced(args.attention, len(args.paths)))]
    if args.label:
        if len(args.label) != len(arms):
            raise DiagnosticsError(f"--label: give one per checkpoint ({len(arms)}), got {len(args.label)}")
        arms = [(p, a, label) for (p, a, _), label in zip(arms, args.label)]
    defaults = arm_labels([p for p, _, _ in arms], [a for _, a, _ in arms])
    labels = [label or default for (_, _, label), default in zip(arms, defaults)]
    out = Path(args.out) if args.out else (Path(results) / "diagnostics" if results else
                                           paths.DATA_DIR / "diagnostics")
    # refuse before any work: results folder, output path, sample sizes, lengths past a model's positions, bad weights
    if results:
        cells_dir(results)   # a missing --results folder is refused now, not after the models ran
    check_out_dir(out)
    check_sample(args.samples, args.seq_len, args.subsamples, args.chunk, args.batch_size)
    if not Path(args.text).is_file():
        raise DiagnosticsError(f"held-out text not found: {args.text}")
    for (path, attention, _), label in zip(arms, labels):
        info = inspect_checkpoint(path, attention)
        check_seq_len(args.seq_len, info.max_positions, f"{label} ({path})")
    t0 = time.time()
    result = diagnose([p for p, _, _ in arms], [a for _, a, _ in arms], labels, device=args.device,
                      dtype=getattr(torch, args.dtype), text=args.text, samples=args.samples, seq_len=args.seq_len,
                      seed=args.seed, subsamples=args.subsamples, results=results,
                      attention_path=args.attention_path, chunk=args.chunk, batch_size=args.batch_size,
                      include_first_query=not args.exclude_first_query)
    files = write_diagnostics(result, out)
    print(markdown_table(result))
    print(f"({result['sample']['samples']} x {result['sample']['seq_len']} tokens from {result['sample']['text']}; "
          f"value ± sd over {result['sample']['subsamples']} sub-samples; {time.time() - t0:.1f}s)")
    for kind, path in files.items():
        print(f"{kind:9s} {path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "diagnose", help="sink rate, kurtosis, activation extremes and sparsity of checkpoints (paper Table 2)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="checkpoints (any format), or one sweep YAML file")
    p.add_argument("--attention", help="force attention kinds: one for all, or comma-separated per checkpoint "
                                       "('own' keeps a checkpoint's own)")
    p.add_argument("--label", nargs="+", help="a label per checkpoint (default: its folder or file name)")
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
    p.add_argument("--attention-path", choices=("auto", "maps", "chunked"), default=DEFAULTS["attention_path"],
                   help="attention statistics from full maps or from q/k in row chunks (auto: maps when small)")
    p.add_argument("--chunk", type=int, default=DEFAULTS["chunk"], help="query rows per chunk (chunked path)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="windows per forward pass")
    p.add_argument("--exclude-first-query", action="store_true",
                   help="leave query position 0 out of the sink average (default: included, as Gu et al.)")
    p.set_defaults(func=cmd_diagnose)
