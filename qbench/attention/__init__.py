"""The one attention dispatch used by the model: softmax or softpick, reference or kernel.

`attend(..., quant=...)` is where attention-side quantizers act: `quant` is None or an object
with optional callables `k`, `v` (on [B, Hkv, T, D]; K after RoPE, i.e. what a KV cache holds),
`scores`, `probs` (on [B, H, T, T] float32) and a bool `needs_maps` (scores or probs quantized:
the materialized maps path runs, never a fused kernel). `backend_log()` records which paths ran.
"""
import contextlib
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


_BACKEND_LOGS: list[set] = []


@contextlib.contextmanager
def backend_log():
    """Collects the attention paths that run inside the block (e.g. "softpick:triton",
    "softmax:sdpa", "softpick:reference", "softmax:maps"): a cell records them."""
    seen: set = set()
    _BACKEND_LOGS.append(seen)
    try:
        yield seen
    finally:
        _BACKEND_LOGS.remove(seen)


def _ran(path: str) -> None:
    for seen in _BACKEND_LOGS:
        seen.add(path)


def attend(q, k, v, kind: str, key_mask=None, need_weights: bool = False, quant=None):
    """Causal attention. q [B, H, T, D]; k, v [B, Hkv, T, D]; key_mask [B, T] (1 = token, 0 = pad).

    Returns (output [B, H, T, D], weights [B, H, T, T] float32 or None). On CUDA, softpick
    runs the Triton kernel unless weights are asked for, the padding is not right-padding or
    `quant` needs the maps (see the module docstring).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; expected one of {KINDS}")
    if key_mask is not None and bool(key_mask.all()):
        key_mask = None
    if torch.is_autocast_enabled(q.device.type):  # RoPE leaves q, k in fp32 next to a 16-bit v
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if quant is not None:
        k = quant.k(k) if getattr(quant, "k", None) else k
        v = quant.v(v) if getattr(quant, "v", None) else v
    if need_weights or (quant is not None and getattr(quant, "needs_maps", False)):
        _ran(f"{kind}:maps")
        k_full, v_full = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
        weights = attention_weights(q, k_full, kind, key_mask, quant)
        out = (weights @ v_full.float()).to(q.dtype)
        return out, (weights if need_weights else None)
    if kind == "softmax":
        _ran("softmax:sdpa")
        return _sdpa_softmax(q, k, v, key_mask), None
    if q.is_cuda and os.environ.get("QBENCH_SOFTPICK_KERNEL", "1") != "0":  # 0: force the torch reference
        from . import triton_softpick

        lengths = right_padded_lengths(key_mask)
        if triton_softpick.is_available() and (key_mask is None or lengths is not None):
            q, k, v = (plain_tensor(t) for t in (q, k, v))
            _ran("softpick:triton:" + triton_softpick.backend_label(q, k, v))
            return triton_softpick.softpick_attention(q, k, v, seq_lens=lengths), None
    _ran("softpick:reference")
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


__all__ = ["KINDS", "attend", "backend_log", "softpick", "softpick_reference", "attention_weights", "repeat_kv", "right_padded_lengths"]
