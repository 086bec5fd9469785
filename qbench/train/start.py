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

from ..errors import one_line
from .data import TrainError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class Start:
    model: object                 # a torch.nn.Module on the CPU, float32
    tokenizer: object
    origin: dict = field(default_factory=dict)   # what the summary records about the start


def fresh_model(preset: dict, kind: str, seed: int, tokenizer):
    """A fresh model of the preset: the same weights for every kind given the seed (built on the CPU)."""
    from ..attention import kinds
    from ..model import new_model

    if kind not in kinds.KINDS:
        raise TrainError(f"unknown attention {kind!r}; expected one of {', '.join(kinds.KINDS)}")
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


def from_checkpoint(path, kind: str) -> Start:
    """The checkpoint at `path` on the CPU in float32, its attention switched to `kind`, in
    training mode, with its own tokenizer."""
    import torch

    from ..model import checkpoint_hash, inspect_checkpoint, load_model

    before = inspect_checkpoint(str(path)).attention
    ckpt = load_model(str(path), attention=kind, device="cpu", dtype=torch.float32)
    model = ckpt.model.float().train()
    for p in model.parameters():
        p.requires_grad_(True)
    origin = {"path": str(path), "format": ckpt.format, "content_hash": checkpoint_hash(path),   # the files
              "loader": "qbench.model.load_model", "attention_before": before, "attention": kind,
              "class": type(model).__name__}
    return Start(model, ckpt.tokenizer, origin)


def checkpoint_tokenizer(path):
    """The tokenizer of the checkpoint at `path`, as cheaply as possible: from its folder's
    tokenizer files, else through load_model (e.g. a GGUF file)."""
    folder = Path(path)
    if folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(folder))
        except Exception as err:
            raise TrainError(f"tokenizer of {folder} could not be loaded: {one_line(err)}") from None
    from ..model import load_model

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
