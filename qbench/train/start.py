"""Where a run's weights come from, and how they are saved.

A run starts either from a fresh model of a preset (`fresh_model`: built on the CPU under the
seed, so both arms of a pair start from the same weights) or from an existing checkpoint
(`from_checkpoint`, `qbench train --from PATH`: continued training, with the attention kind
switched to `--attention`). Checkpoints load through `qbench.model.load_model(path,
attention=..., device=..., dtype=...)` (the paper's format, transformers folders, GGUF; attention
routed through qbench's registry), or, where that function does not exist yet, through the
paper-format loader `qbench.model.load_checkpoint` with the config's attn_impl switched.

Saving: qbench's own model in the paper's format (config.json's attn_impl names the attention);
any other model (transformers classes, GGUF loaded as transformers) with save_pretrained in its
own format, plus `qbench_attention` in config.json (what the loader reads to route attention).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .data import TrainError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class Start:
    model: object                 # a torch.nn.Module on the CPU, float32
    tokenizer: object
    origin: dict = field(default_factory=dict)   # what the summary records about the start


def fresh_model(preset: dict, kind: str, seed: int, tokenizer):
    """A fresh model of the preset: the same weights for both kinds given the seed (built on the CPU)."""
    from ..model import ATTN_IMPL_OF_KIND, new_model

    if kind not in ATTN_IMPL_OF_KIND:
        raise TrainError(f"unknown attention {kind!r} for a model trained from scratch; expected one of "
                         f"{', '.join(ATTN_IMPL_OF_KIND)}")
    if preset.get("model") is None:
        raise TrainError(f"preset {preset['name']!r} has no model shape: it continues a checkpoint (--from PATH)")
    fields = dict(preset["model"])
    vocab = len(tokenizer)
    if fields.get("vocab_size") is None:
        fields["vocab_size"] = 64 * math.ceil(vocab / 64)
    if vocab > fields["vocab_size"]:
        raise TrainError(f"the tokenizer has {vocab} tokens but preset {preset['name']!r} has vocab_size "
                         f"{fields['vocab_size']}")
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise TrainError("the tokenizer needs bos and eos tokens")
    fields.update(max_position_embeddings=preset["context"], bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return new_model(kind, seed=seed, **fields)


def _load_model_function():
    """qbench.model.load_model where it exists (None otherwise)."""
    from .. import model

    return getattr(model, "load_model", None)


def from_checkpoint(path, kind: str) -> Start:
    """The checkpoint at `path` on the CPU in float32, its attention switched to `kind`, in
    training mode, with its own tokenizer."""
    import torch

    load_model = _load_model_function()
    if load_model is not None:
        before = _attention_before(path)
        ckpt = load_model(str(path), attention=kind, device="cpu", dtype=torch.float32)
        fmt = getattr(ckpt, "format", None) or _format_of(ckpt.model)
        loader = "qbench.model.load_model"
    else:
        from ..model import ATTN_IMPL_OF_KIND, load_checkpoint, read_config, resolve

        folder = resolve(path)
        read_config(folder)        # the paper's format only: a clear error for anything else
        if kind not in ATTN_IMPL_OF_KIND:
            raise TrainError(f"--attention {kind}: the paper-format loader knows {', '.join(ATTN_IMPL_OF_KIND)} "
                             f"(other kinds need qbench.model.load_model)")
        ckpt = load_checkpoint(folder)
        before = ckpt.model.config.attention_kind
        ckpt.model.config.attn_impl = ATTN_IMPL_OF_KIND[kind]   # the attention modules read it at each call
        fmt, loader = "qbench", "qbench.model.load_checkpoint (paper format; load_model not available)"
    model = ckpt.model.float().train()
    for p in model.parameters():
        p.requires_grad_(True)
    origin = {"path": str(path), "format": fmt, "content_hash": ckpt.content_hash, "loader": loader,
              "attention_before": before, "attention": kind, "class": type(model).__name__}
    return Start(model, ckpt.tokenizer, origin)


def _attention_before(path):
    """The checkpoint's own attention kind, from qbench.model.inspect_checkpoint where it exists."""
    from .. import model

    inspect = getattr(model, "inspect_checkpoint", None)
    if inspect is None:
        return None
    info = inspect(str(path))
    return info.get("attention") if isinstance(info, dict) else getattr(info, "attention", None)


def _format_of(model) -> str:
    from ..model import QBenchForCausalLM

    return "qbench" if isinstance(model, QBenchForCausalLM) else "transformers"


def checkpoint_tokenizer(path):
    """The tokenizer of the checkpoint at `path`, as cheaply as possible: from its folder's
    tokenizer files, else through load_model (e.g. a GGUF file)."""
    folder = Path(path)
    if folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(folder))
        except Exception as err:
            raise TrainError(f"tokenizer of {folder} could not be loaded: {type(err).__name__}: {err}") from None
    load_model = _load_model_function()
    if load_model is None:
        raise TrainError(f"--from {path}: no tokenizer files there, and qbench.model.load_model (which reads "
                         f"other formats) is not available")
    return load_model(str(path)).tokenizer


def save_trained(model, tokenizer, out: Path, kind: str, dtype) -> str:
    """Save the trained model into `out`; returns the format written ("qbench" or "transformers")."""
    from ..model import QBenchForCausalLM, save_checkpoint

    if isinstance(model, QBenchForCausalLM):
        save_checkpoint(model, tokenizer, out, dtype=dtype)
        return "qbench"
    model.to(dtype)
    model.config.qbench_attention = kind
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return "transformers"


def vocab_rows(model) -> int:
    return model.get_input_embeddings().num_embeddings
