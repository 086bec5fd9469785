"""INTEGRATION placeholder until the models branch lands: inspect_checkpoint / load_model for the
paper's format only (the models branch provides every format, strict tensor checks, GGUF)."""
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .pair import (ARCHITECTURE_FIELDS, PairError, _tokenizer_fingerprint, checkpoint_hash, load_checkpoint,
                   read_config, resolve, weight_file)


@dataclass
class CheckpointInfo:
    path: Path
    format: str
    attention: str
    content_hash: str
    linear_shapes: dict
    architecture: dict = field(default_factory=dict)
    tokenizer: dict = field(default_factory=dict)

    def differences(self, other: "CheckpointInfo") -> list[str]:
        out = [f"{k}: {v} vs {other.architecture.get(k)}" for k, v in self.architecture.items()
               if other.architecture.get(k) != v]
        if self.tokenizer != other.tokenizer:
            out.append("the tokenizer files differ")
        return out


def inspect_checkpoint(path, attention=None) -> CheckpointInfo:
    folder = resolve(path)
    config = read_config(folder)
    weight_file(folder)
    if attention is not None and attention != config.attention_kind:
        raise PairError(f"{folder}: forcing attention {attention!r} needs the models branch")
    from .modeling import QBenchForCausalLM

    with torch.device("meta"):
        model = QBenchForCausalLM(config)
    shapes = {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return CheckpointInfo(folder, "qbench", config.attention_kind, checkpoint_hash(folder), shapes,
                          {k: getattr(config, k) for k in ARCHITECTURE_FIELDS}, _tokenizer_fingerprint(folder))


def load_model(path, attention=None, device="cpu", dtype=torch.float32):
    info = inspect_checkpoint(path, attention)
    return load_checkpoint(info.path, device, dtype)
