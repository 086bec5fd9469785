"""The qbench model: reads and writes the paper's checkpoint format (see checkpoint-format.md)."""
from transformers import AutoConfig, AutoModelForCausalLM

from .config import ATTN_IMPL_OF_KIND, ATTN_IMPLS, QBenchConfig
from .inspect import CheckpointInfo, inspect_checkpoint, load_model
from .modeling import QBenchForCausalLM, QBenchModel
from .pair import (Checkpoint, Pair, PairError, check_pair, checkpoint_hash, load_checkpoint, load_pair,
                   read_config, resolve)

AutoConfig.register("transformer", QBenchConfig, exist_ok=True)
AutoModelForCausalLM.register(QBenchConfig, QBenchForCausalLM, exist_ok=True)


def new_model(kind: str = "softmax", seed: int = 0, **config_fields) -> QBenchForCausalLM:
    """A randomly initialised model (tests, training from scratch); fields as in config.json."""
    import torch

    config = QBenchConfig(attn_impl=ATTN_IMPL_OF_KIND[kind], **config_fields)
    torch.manual_seed(seed)
    return QBenchForCausalLM(config).eval()


def save_checkpoint(model, tokenizer, folder, dtype=None) -> None:
    """Save in the checkpoint format (config.json, model.safetensors, tokenizer files)."""
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


__all__ = ["ATTN_IMPLS", "ATTN_IMPL_OF_KIND", "QBenchConfig", "QBenchModel", "QBenchForCausalLM", "Checkpoint",
           "Pair", "PairError", "check_pair", "checkpoint_hash", "load_checkpoint", "load_pair", "read_config",
           "resolve", "new_model", "save_checkpoint", "CheckpointInfo", "inspect_checkpoint", "load_model"]
