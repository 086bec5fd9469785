"""Every attention kind inside transformers' own models: one attention function, registered with
transformers' AttentionInterface under the name "qbench", that calls qbench.attention.attend.

transformers hands an attention function q [B, H, T, D] and k, v [B, Hkv, T, D] (after RoPE and
any q/k norm) and expects the output as [B, T, H, D] (the layout its o_proj reshape reads; the
softpick authors' registration returned [B, H, T, D]). The mask is transformers' own: we
register its SDPA mask builder for our name, so the function receives a bool [B, 1, Tq, Tk]
visibility mask with causality, padding and sliding windows (Gemma3) in it, or None for the plain
causal case. The scale is the module's (`scaling`); GQA as the module's kv heads. Dropout must
be 0 (qbench evaluates and fine-tunes without attention dropout); logit soft-capping and
attention sinks (`s_aux`) are refused.

The kind comes from the model's config field `qbench_attention` (softmax when absent). A module
whose forward calls this function is an attention module of qbench.model.attention_modules:
quantizers set `module.attn_quant`, diagnostics `module.attn_observer` (see attend).
"""
from __future__ import annotations

import torch

from ..attention import AttentionError, attend, collecting

NAME = "qbench"
_CALLS: list[set] = []


def kind_of(module) -> str:
    return getattr(module.config, "qbench_attention", None) or "softmax"


def qbench_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    if dropout and module.training:
        raise AttentionError(f"{type(module).__name__}: attention dropout {dropout} is not supported; set the "
                             "config's attention_dropout to 0")
    for name in ("softcap", "s_aux", "sinks", "position_bias"):
        if kwargs.get(name) is not None:
            raise AttentionError(f"{type(module).__name__}: attention with {name} is not supported by qbench")
    if kwargs.get("is_causal") is False or not getattr(module, "is_causal", True):
        raise AttentionError(f"{type(module).__name__}: only causal (decoder) self-attention is supported")
    for calls in _CALLS:
        calls.add(id(module))
    out, weights = attend(query, key, value, kind_of(module), mask=attention_mask,
                          need_weights=bool(kwargs.get("output_attentions")),
                          quant=getattr(module, "attn_quant", None), scale=scaling,
                          observe=getattr(module, "attn_observer", None))
    return out.transpose(1, 2).contiguous(), weights


def recording_calls():
    """The ids of the modules whose forward called the qbench attention function inside the block."""
    return collecting(_CALLS)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, qbench_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def is_hf_attention_module(module) -> bool:
    """A transformers attention module that dispatches through AttentionInterface (it has the
    model config, its layer index and its scaling)."""
    return (type(module).__name__.endswith("Attention") and hasattr(module, "config")
            and hasattr(module, "layer_idx") and hasattr(module, "scaling"))


def attention_modules(model) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every module of `model` that calls qbench.attention.attend."""
    from .modeling import Attention

    return [(n, m) for n, m in model.named_modules() if isinstance(m, Attention) or is_hf_attention_module(m)]
