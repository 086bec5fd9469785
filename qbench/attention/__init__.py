"""The one attention dispatch used by the model: softmax or softpick, reference or kernel."""
import os

import torch
import torch.nn.functional as F

from .reference import attention_weights, causal_valid_mask, repeat_kv, softpick, softpick_reference

KINDS = ("softmax", "softpick")


def right_padded_lengths(key_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Per-row lengths if `key_mask` [B, T] is right padding (1...1 0...0), else None."""
    if key_mask is None:
        return None
    lengths = key_mask.sum(dim=1)
    positions = torch.arange(key_mask.shape[1], device=key_mask.device)
    if torch.equal(key_mask.bool(), positions[None, :] < lengths[:, None]):
        return lengths.to(torch.int32)
    return None


def attend(q, k, v, kind: str, key_mask=None, need_weights: bool = False):
    """Causal attention. q [B, H, T, D]; k, v [B, Hkv, T, D]; key_mask [B, T] (1 = token, 0 = pad).

    Returns (output [B, H, T, D], weights [B, H, T, T] float32 or None). On CUDA, softpick
    runs the Triton kernel unless weights are asked for or the padding is not right-padding.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; expected one of {KINDS}")
    if key_mask is not None and bool(key_mask.all()):
        key_mask = None
    if torch.is_autocast_enabled(q.device.type):  # RoPE leaves q, k in fp32 next to a 16-bit v
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if need_weights:
        k_full, v_full = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
        weights = attention_weights(q, k_full, kind, key_mask)
        return (weights @ v_full.float()).to(q.dtype), weights
    if kind == "softmax":
        return _sdpa_softmax(q, k, v, key_mask), None
    if q.is_cuda and os.environ.get("QBENCH_SOFTPICK_KERNEL", "1") != "0":  # 0: force the torch reference
        from . import triton_softpick

        lengths = right_padded_lengths(key_mask)
        if triton_softpick.is_available() and (key_mask is None or lengths is not None):
            q, k, v = (plain_tensor(t) for t in (q, k, v))
            return triton_softpick.softpick_attention(q, k, v, seq_lens=lengths), None
    return softpick_reference(q, k, v, key_mask), None


def plain_tensor(t: torch.Tensor) -> torch.Tensor:
    """A kernel reads raw memory, so a tensor subclass must become a plain tensor first: quanto's
    activation quantizers hand over quantized tensors (ActivationQBytesTensor), whose raw
    memory is int8 data, not values (an illegal memory access in the kernel, seen on an H200)."""
    if type(t) is torch.Tensor:
        return t
    return t.dequantize() if hasattr(t, "dequantize") else t.as_subclass(torch.Tensor)


def _sdpa_softmax(q, k, v, key_mask):
    k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    if key_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    t = q.shape[-2]
    valid = causal_valid_mask(t, key_mask, q.device) | torch.eye(t, dtype=torch.bool, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=valid)


__all__ = ["KINDS", "attend", "softpick", "softpick_reference", "attention_weights", "repeat_kv", "right_padded_lengths"]
