"""Models qbench runs: its own model for the paper's checkpoint format, transformers' own classes
for transformers folders and GGUF files; attention always through qbench.attention.attend."""
from transformers import AutoConfig, AutoModelForCausalLM

from ..attention import kinds
from . import hf_attention
from .config import QBenchConfig
from .hf_attention import attention_modules
from .loading import (FORMATS, Checkpoint, CheckpointError, CheckpointInfo, checkpoint_hash, inspect_checkpoint,
                      load_checkpoint, load_model, read_config, resolve_source)
from .modeling import QBenchForCausalLM, QBenchModel
from .pair import Pair, PairError, arm_differences, check_arms, check_pair, load_pair

AutoConfig.register("transformer", QBenchConfig, exist_ok=True)
AutoModelForCausalLM.register(QBenchConfig, QBenchForCausalLM, exist_ok=True)
hf_attention.register()


def new_model(kind: str = "softmax", seed: int = 0, **config_fields) -> QBenchForCausalLM:
    """A randomly initialised model (tests, training from scratch); fields as in config.json."""
    import torch

    config = QBenchConfig(attn_impl=kinds.attn_impl_of(kind), **config_fields)
    torch.manual_seed(seed)
    return QBenchForCausalLM(config).eval()


def save_checkpoint(model, tokenizer, folder, dtype=None) -> None:
    """Save in the checkpoint format (config.json, model.safetensors, tokenizer files)."""
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


__all__ = ["FORMATS", "QBenchConfig", "QBenchModel", "QBenchForCausalLM", "Checkpoint", "CheckpointError",
           "CheckpointInfo", "Pair", "PairError", "arm_differences", "attention_modules", "check_arms",
           "check_pair", "checkpoint_hash", "inspect_checkpoint", "load_checkpoint", "load_model", "load_pair",
           "new_model", "read_config", "resolve_source", "save_checkpoint"]
