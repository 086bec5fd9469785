"""Random-initialised models at the paper's sizes, for timing without weights (`qbench bench`).

The paper's pairs (../shared/reference/paper.md): Llama-style, SwiGLU (hidden_ratio 4), RMSNorm
eps 1e-6, RoPE theta 10000, untied embeddings, no biases, vocab 32000, context 4096;
340M: hidden 1024, 24 layers, 16 heads; 1.8B: hidden 2048, 32 layers, 32 heads (no GQA, so
head_dim 64 at both sizes). A pair is two models with the same weights (attention has no
parameters), one per attention kind. Nothing is written to disk unless `save_random_pair` is
called. The metrics of random weights mean nothing: these models are for timings only.

A model spec `random:SIZE[:ATTENTION]` (e.g. `random:340M`, `random:1.8B:softpick`) stands for
such a model wherever a `qbench bench` command takes a checkpoint folder. Its tokenizer is the
bundled pair's (vocab 8192, so token ids stay below the model's 32000).
"""
from __future__ import annotations

from . import BenchError

PAPER_COMMON = {"vocab_size": 32000, "max_position_embeddings": 4096, "hidden_ratio": 4, "norm_eps": 1e-6,
                "rope_theta": 10000.0, "tie_word_embeddings": False}
SIZES = {
    "340M": {"hidden_size": 1024, "num_hidden_layers": 24, "num_heads": 16, **PAPER_COMMON},
    "1.8B": {"hidden_size": 2048, "num_hidden_layers": 32, "num_heads": 32, **PAPER_COMMON},
    # for tests and CPU smoke runs: every step of a benchmark on something small
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_heads": 4, "vocab_size": 8192,
             "max_position_embeddings": 512, "hidden_ratio": 4, "tie_word_embeddings": False},
}
SPEC_PREFIX = "random:"


class BenchModelError(BenchError, ValueError):
    """An unknown size or a malformed `random:` model spec."""


def config_fields(size: str, layers: int | None = None) -> dict:
    """The config.json fields of a size (`layers` overrides the number of blocks)."""
    if size not in SIZES:
        raise BenchModelError(f"unknown model size {size!r}; expected one of {sorted(SIZES)}")
    fields = dict(SIZES[size])
    if layers is not None:
        fields["num_hidden_layers"] = int(layers)
    return fields


def random_model(size: str, attention: str = "softmax", seed: int = 0, device="cpu", dtype=None,
                 layers: int | None = None):
    """A randomly initialised qbench model of a paper size, built on `device` (fast on a GPU)."""
    import torch

    from ..model import new_model

    if attention not in ("softmax", "softpick"):
        raise BenchModelError(f"unknown attention {attention!r}; expected softmax or softpick")
    with torch.device(device):
        model = new_model(attention, seed=seed, **config_fields(size, layers))
    return model.to(dtype) if dtype is not None else model


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def bundled_tokenizer():
    from transformers import AutoTokenizer

    from .. import paths

    return AutoTokenizer.from_pretrained(paths.BUNDLED_SOFTMAX)


def parse_spec(spec) -> tuple[str, str] | None:
    """(size, attention) of a `random:SIZE[:ATTENTION]` spec, or None for anything else."""
    text = str(spec)
    if not text.startswith(SPEC_PREFIX):
        return None
    parts = text[len(SPEC_PREFIX):].split(":")
    if len(parts) > 2 or parts[0] not in SIZES or (len(parts) == 2 and parts[1] not in ("softmax", "softpick")):
        raise BenchModelError(f"model spec {text!r}: expected random:SIZE[:softmax|softpick] with SIZE one of "
                              f"{sorted(SIZES)}")
    return parts[0], (parts[1] if len(parts) == 2 else "softmax")


def load_spec(spec, device="cpu", dtype=None, seed: int = 0):
    """(model, tokenizer, an identifier in place of a content hash) of a `random:` spec."""
    size, attention = parse_spec(spec)
    return random_model(size, attention, seed, device, dtype), bundled_tokenizer(), f"random-{size}-seed{seed}"


def save_random_model(size: str, attention: str, folder, seed: int = 0, dtype=None, layers: int | None = None,
                      device="cpu"):
    """Write one random model as a checkpoint folder (bundled tokenizer); built on `device`."""
    from ..model import save_checkpoint

    save_checkpoint(random_model(size, attention, seed, device, layers=layers), bundled_tokenizer(), folder,
                    dtype=dtype)


def save_random_pair(size: str, folder, seed: int = 0, dtype=None, layers: int | None = None, device="cpu") -> dict:
    """Write a random pair as checkpoints (folder/softmax, folder/softpick, bundled tokenizer),
    usable by every qbench command. Returns {attention: path}."""
    from pathlib import Path

    out = {}
    for attention in ("softmax", "softpick"):
        out[attention] = Path(folder) / attention
        save_random_model(size, attention, out[attention], seed, dtype, layers, device)
    return out
