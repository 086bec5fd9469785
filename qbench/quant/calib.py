"""Calibration batches from held-out text (never from evaluation data).

Text file: a document file as `qbench.text.read_documents` reads it (plain or gzip UTF-8,
documents separated by a line holding only U+241E, one whitespace rule). Each document is
tokenized on its own (no special tokens), documents are joined into one stream with a
start-of-document token (the tokenizer's BOS; else EOS between documents; else nothing), the
stream is cut into non-overlapping windows of `seq_len` tokens from a seed-dependent offset, and `n_samples`
windows are drawn without replacement with a fixed-seed generator. Same tokenizer, file,
n_samples, seq_len and seed: the same batch, on every machine.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..text import DOC_SEPARATOR as DOC_SEP, read_documents  # noqa: F401  (the one document reader)

_AUTO = object()


def _encode_all(tokenizer, docs: list[str]) -> list[list[int]]:
    if hasattr(tokenizer, "encode_batch") and not hasattr(tokenizer, "batch_decode"):
        # a `tokenizers.Tokenizer`
        return [e.ids for e in tokenizer.encode_batch(docs, add_special_tokens=False)]
    out = tokenizer(docs, add_special_tokens=False)["input_ids"]   # a transformers tokenizer
    return [list(x) for x in out]


def _doc_start(tokenizer) -> tuple[int | None, bool]:
    """(token id, True if it goes before each document / False if after)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        return bos, True
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        return eos, False
    return None, True


def calibration_batch(tokenizer, text_path: str | Path, n_samples: int, seq_len: int, seed: int,
                      doc_sep_id=_AUTO) -> torch.Tensor:
    """LongTensor [n_samples, seq_len] of token ids sampled from the held-out text.
    `doc_sep_id`: token placed before each document (default: see module docstring)."""
    if n_samples < 1 or seq_len < 1:
        raise ValueError(f"n_samples and seq_len must be positive, got {n_samples}, {seq_len}")
    docs = read_documents(text_path)
    if not docs:
        raise ValueError(f"{text_path}: no documents")
    if doc_sep_id is _AUTO:
        sep, before = _doc_start(tokenizer)
    else:
        sep, before = doc_sep_id, True
    stream: list[int] = []
    for ids in _encode_all(tokenizer, docs):
        if sep is not None and before:
            stream.append(sep)
        stream.extend(ids)
        if sep is not None and not before:
            stream.append(sep)
    g = torch.Generator().manual_seed(int(seed))
    offset = int(torch.randint(0, seq_len, (1,), generator=g)) if len(stream) >= (n_samples + 1) * seq_len else 0
    n_windows = (len(stream) - offset) // seq_len
    if n_windows < n_samples:
        raise ValueError(f"{text_path}: {len(stream)} tokens give {n_windows} windows of {seq_len} "
                         f"tokens, fewer than the {n_samples} samples asked for")
    t = torch.tensor(stream[offset: offset + n_windows * seq_len], dtype=torch.long).view(n_windows, seq_len)
    pick = torch.randperm(n_windows, generator=g)[:n_samples]
    return t[pick].contiguous()


def recipe_calibration(recipe, tokenizer, text_path: str | Path) -> torch.Tensor:
    """The calibration batch a recipe asks for (its `calib:` section)."""
    c = recipe.calib
    if c is None:
        raise ValueError(f"{recipe.source}: recipe {recipe.name!r} does not calibrate")
    return calibration_batch(tokenizer, text_path, c["samples"], c["seq_len"], c["seed"])
