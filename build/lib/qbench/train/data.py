"""Training data: token files, their sidecars, the window sampler and the batch hash.

A token file is a flat array of token ids (`numpy.save` format; raw little-endian uint16 is read
too): <s> doc </s> per document of a corpus's train.txt. uint16 while the tokenizer's vocabulary
fits (ids < 65536), uint32 beyond. Its sidecar `<file>.json` records what it was encoded from
(sha256 of train.txt and of the tokenizer), so a changed corpus or tokenizer is encoded again.

Two token files per corpus folder at most kinds of use:
    train.tokens.u16            the corpus's own tokenizer (corpus/tokenizer/tokenizer.json)
    train.tokens.<fp>.npy       another tokenizer (a pretrained model's): <fp> = the first 12 hex
                                digits of the sha256 of its serialized tokenizers JSON
Only the standard library is imported at module level.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from ..errors import QBenchError
from ..files import atomic_write_text, file_sha256

TOKEN_CACHE = "train.tokens.u16"            # encoded train.txt, next to it in the corpus folder
UINT16_VOCAB = 1 << 16


class TrainError(QBenchError, RuntimeError):
    """Training cannot start or did not finish: bad preset, missing corpus or token file, a token
    file made from other inputs, unwritable folder..."""


def token_dtype(vocab_size: int):
    """uint16 while every id fits (vocab <= 65536), else uint32."""
    import numpy as np

    return np.uint16 if vocab_size <= UINT16_VOCAB else np.uint32


def load_tokens(path: Path, mmap: bool = True):
    """A token file as a flat uint16 or uint32 array: the `numpy.save` format (memory-mapped by
    default, so processes of one host share the pages), or raw little-endian uint16 (any other
    file)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise TrainError(f"token file {path} not found (write one with encode_corpus, or leave out --tokens "
                        f"to encode the corpus: `qbench data corpus` builds it)")
    with open(path, "rb") as f:
        is_npy = f.read(6) == b"\x93NUMPY"
    if is_npy:
        try:
            tokens = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        except ValueError as err:
            raise TrainError(f"token file {path} could not be read: {err}") from None
        if tokens.dtype not in (np.uint16, np.uint32) or tokens.ndim != 1:
            raise TrainError(f"token file {path} holds {tokens.dtype} {tokens.shape}, "
                            f"expected a flat uint16 or uint32 array")
        return tokens
    if path.stat().st_size % 2:
        raise TrainError(f"token file {path} has an odd size: not a uint16 token file")
    return np.fromfile(path, dtype="<u2").astype(np.uint16)


def save_tokens(path: Path, ids, vocab_size: int) -> Path:
    """Write `ids` (checked to lie in [0, vocab_size)) as a flat array of token_dtype(vocab_size),
    atomically."""
    import os

    import numpy as np

    ids = np.asarray(ids)
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise TrainError(f"token ids outside [0, {vocab_size}) for {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.npy")
    np.save(tmp, ids.astype(token_dtype(vocab_size)))
    os.replace(tmp, path)
    return path


def sidecar(token_file: Path) -> Path:
    return Path(token_file).with_name(Path(token_file).name + ".json")


def read_sidecar(token_file: Path) -> dict | None:
    try:
        return json.loads(sidecar(token_file).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of a transformers fast tokenizer's serialized `tokenizers` JSON (the same for the
    same vocabulary, merges, normalizer and pre-tokenizer, wherever it was loaded from)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TrainError(f"{type(tokenizer).__name__} is not a fast tokenizer: the corpus is encoded with a "
                        f"`tokenizers` backend (pass a folder with tokenizer.json)")
    return hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()


def corpus_token_file(corpus_dir: Path, tokenizer_dir: Path) -> Path:
    """corpus_dir/train.tokens.u16, encoded from train.txt with the corpus's tokenizer on first
    use, and again whenever train.txt or tokenizer.json differ from those it was encoded from.
    Written atomically: concurrent runs never see half a file."""
    corpus_dir, tokenizer_dir = Path(corpus_dir), Path(tokenizer_dir)
    train_txt = corpus_dir / "train.txt"
    for needed in (train_txt, tokenizer_dir / "tokenizer.json"):
        if not needed.is_file():
            raise corpus_missing(needed)
    cache = corpus_dir / TOKEN_CACHE
    made_from = {"train_txt_sha256": file_sha256(train_txt),
                 "tokenizer_json_sha256": file_sha256(tokenizer_dir / "tokenizer.json")}
    if _made_from(cache, made_from):
        return cache
    from .tokenizer import encode_corpus

    print(f"qbench train: encoding {train_txt} -> {cache} (once per corpus and tokenizer)", file=sys.stderr)
    ids = encode_corpus(corpus_dir, tokenizer_dir, cache)   # written atomically
    write_json(sidecar(cache), {**made_from, "tokens": int(len(ids)),
                                "layout": "<s> doc </s> per document of train.txt, uint16, numpy.save"})
    return cache


def model_token_file(corpus_dir: Path, tokenizer) -> Path:
    """corpus_dir/train.tokens.<fp>.npy: train.txt encoded with `tokenizer` (a transformers fast
    tokenizer, e.g. a pretrained model's own), <s> doc </s> per document with the tokenizer's bos
    and eos, uint16 or uint32 by vocabulary size; cached like corpus_token_file."""
    import os

    import numpy as np

    from .corpus import read_documents
    from .tokenizer import encode_stream

    corpus_dir = Path(corpus_dir)
    train_txt = corpus_dir / "train.txt"
    if not train_txt.is_file():
        raise corpus_missing(train_txt)
    fingerprint = tokenizer_fingerprint(tokenizer)
    cache = corpus_dir / f"train.tokens.{fingerprint[:12]}.npy"
    made_from = {"train_txt_sha256": file_sha256(train_txt), "tokenizer_sha256": fingerprint}
    if _made_from(cache, made_from):
        return cache
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise TrainError(f"the tokenizer ({type(tokenizer).__name__}) needs bos and eos tokens to delimit documents")
    vocab = len(tokenizer)
    print(f"qbench train: encoding {train_txt} -> {cache} with the model's tokenizer ({vocab} tokens)", file=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    ids = encode_stream(tokenizer.backend_tokenizer, read_documents(train_txt), bos, eos, np.int64,
                        desc="encoding train")
    save_tokens(cache, ids, vocab)
    write_json(sidecar(cache), {**made_from, "tokens": int(len(ids)), "vocab_size": vocab,
                                "bos_token_id": bos, "eos_token_id": eos,
                                "layout": f"<s> doc </s> per document of train.txt, {token_dtype(vocab).__name__}, "
                                          f"numpy.save"})
    return cache


def _made_from(cache: Path, made_from: dict) -> bool:
    made = read_sidecar(cache) if cache.is_file() else None
    return made is not None and {k: made.get(k) for k in made_from} == made_from


def check_token_file(token_file: Path, tokenizer_dir: Path | None = None, tokenizer=None) -> None:
    """Refuse a token file whose sidecar says it was encoded with another tokenizer than the
    folder's tokenizer.json (or than the tokenizer object)."""
    made_from = read_sidecar(token_file) or {}
    if tokenizer_dir is not None and made_from.get("tokenizer_json_sha256"):
        tokenizer_json = Path(tokenizer_dir) / "tokenizer.json"
        if tokenizer_json.is_file() and made_from["tokenizer_json_sha256"] != file_sha256(tokenizer_json):
            raise TrainError(f"token file {token_file} was encoded with another tokenizer than {tokenizer_dir} "
                            f"(see {sidecar(token_file)}); encode it again (delete it and run without --tokens)")
    if tokenizer is not None and made_from.get("tokenizer_sha256"):
        if made_from["tokenizer_sha256"] != tokenizer_fingerprint(tokenizer):
            raise TrainError(f"token file {token_file} was encoded with another tokenizer than the model's "
                            f"(see {sidecar(token_file)}); leave out --tokens to encode the corpus with it")


def corpus_missing(what: Path) -> TrainError:
    return TrainError(f"corpus not built yet: {what} not found; `qbench data corpus` builds it "
                     f"(or pass --tokens FILE and --tokenizer DIR)")


# ---------------------------------------------------------------------------------------------
# Data order
# ---------------------------------------------------------------------------------------------

class WindowSampler:
    """Start positions of windows of `window` tokens: each epoch picks a random offset, cuts the
    token stream into consecutive windows from there and shuffles them. Seeded, so two runs with
    one seed on one token file see the same batches in the same order (and so do all ranks of a
    data-parallel run: each takes its shard of the same global batch)."""

    def __init__(self, n_tokens: int, window: int, batch_size: int, seed: int):
        import numpy as np

        if n_tokens < window + 1:
            raise TrainError(f"the token file has {n_tokens} tokens, fewer than one window of {window}")
        self.n_tokens, self.window, self.batch_size = n_tokens, window, batch_size
        self.rng = np.random.default_rng(seed)
        self.queue = np.zeros(0, dtype=np.int64)

    def next_starts(self):
        import numpy as np

        while len(self.queue) < self.batch_size:
            offset = int(self.rng.integers(self.window))
            if self.n_tokens - offset < self.window:
                offset = 0
            count = (self.n_tokens - offset) // self.window
            starts = offset + self.window * self.rng.permutation(count)
            self.queue = np.concatenate([self.queue, starts])
        starts, self.queue = self.queue[: self.batch_size], self.queue[self.batch_size:]
        return starts


def gather_windows(tokens, starts, window: int):
    """[len(starts), window] int64 array of the windows starting at `starts`."""
    import numpy as np

    return np.asarray(tokens[np.asarray(starts)[:, None] + np.arange(window, dtype=np.int64)], dtype=np.int64)


def batch_hash(batch) -> str:
    """16 hex digits of the sha256 of a batch's token ids (as little-endian uint32 when an id
    exceeds uint16, else uint16: the hashes of uint16-era logs stay the same)."""
    import numpy as np

    batch = np.asarray(batch)
    wide = batch.size and int(batch.max()) >= UINT16_VOCAB
    return hashlib.sha256(batch.astype("<u4" if wide else "<u2").tobytes()).hexdigest()[:16]


def unigram_perplexity(train_tokens, targets, vocab: int) -> float:
    """Perplexity of an add-one-smoothed unigram model fitted on the training tokens."""
    import math

    import numpy as np

    counts = np.bincount(np.asarray(train_tokens), minlength=vocab).astype(np.float64)
    logp = np.log(counts + 1.0) - math.log(counts.sum() + vocab)
    return float(math.exp(-logp[np.asarray(targets).reshape(-1)].mean()))
