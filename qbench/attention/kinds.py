"""The one registry of attention kinds: name -> AttentionKind.

A kind is a normaliser of the attention scores over the keys. Each entry has
- `normalise(scores, valid)`: the float32 reference over the last dim (qbench/attention/reference.py),
  with a numerically stable form; masked entries count in no sum, a row with nothing to
  attend to is zero;
- `attn_impl`: the value of `attn_impl` in a config.json of the paper's format
  (flash-linear-attention "transformer" models) that means this kind, or None;
- `fast(q, k, v, key_mask, mask, scale)` (arguments as qbench.attention.attend has them after
  normalising the mask): an optional fused path returning (output, backend label), or None where
  it does not apply (device, head size, mask); the reference runs then;
- `description`.

Adding a kind = one `register(AttentionKind(...))` here plus its normaliser (and optionally a
fast path); every model qbench loads, the maps path, the attention-side quantizers, the
diagnostics and the paper-format config pick it up from here.

Where the definitions come from (read in the softpick authors' fork of flash-linear-attention,
repository zaydzuhri/flash-linear-attention, fla/ops/attn/):
- softpick: naive_softpick.py / parallel_softpick.py (attn_impl "parallel_softpick_attn"), the
  paper's formula (paper.md); eps 1e-6 as in the Triton kernel.
- softmax1: naive_softmax_plus_one.py, `softmax_plus_one`: x_e / (exp(-x_m) + sum x_e) with
  x_e = exp(x - x_m), i.e. e^{x_i} / (1 + sum_j e^{x_j}); the op is parallel_softmax_plus_one_attn
  (fla/ops/attn/parallel_softmax_plus_one.py), whose name we take as its attn_impl value (the
  stored versions of the fork's fla/layers/attn.py do not dispatch it). The fork's max shift is
  not clamped at 0; ours is (same value, no overflow of e^{-m} for very negative rows).
- rectified: naive_rectified.py, `naive_rectified_attn`: scores < 0 are set to -inf, then the
  causal mask, then softmax, then NaN -> 0 (a row without a non-negative score is zero); the
  Triton kernel parallel_rectified.py does the same (`p = where(s < 0, 0, exp(s - m))`, output 0
  where the sum is 0); attn_impl "parallel_rectified_attn" in fla/layers/attn.py. A score of
  exactly 0 is kept (weight e^0) in both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import QBenchError
from . import reference
from .reference import repeat_kv, visible_mask


class AttentionError(QBenchError, ValueError):
    """An unknown attention kind, or a use of attention this code does not compute."""


@dataclass(frozen=True)
class AttentionKind:
    name: str
    normalise: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    description: str
    attn_impl: str | None = None
    fast: Callable | None = None
    # False: the fast path runs plain causal attention only (a visibility mask falls back to the
    # materialized reference, much slower on a GPU)
    fast_takes_masks: bool = True


KINDS: dict[str, AttentionKind] = {}
ATTN_IMPLS: dict[str, str] = {}   # paper-format attn_impl -> kind name (filled by register)


def register(kind: AttentionKind) -> AttentionKind:
    if kind.name in KINDS:
        raise AttentionError(f"attention kind {kind.name!r} is registered twice")
    if kind.attn_impl is not None and kind.attn_impl in ATTN_IMPLS:
        raise AttentionError(f"attn_impl {kind.attn_impl!r} already means {ATTN_IMPLS[kind.attn_impl]!r}")
    KINDS[kind.name] = kind
    if kind.attn_impl is not None:
        ATTN_IMPLS[kind.attn_impl] = kind.name
    return kind


def names() -> tuple[str, ...]:
    return tuple(KINDS)


def get(name: str) -> AttentionKind:
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise AttentionError(f"unknown attention kind {name!r}; expected one of {', '.join(KINDS)}") from None


def kind_of_attn_impl(attn_impl: str) -> str:
    """The kind a paper-format `attn_impl` value means; AttentionError for others."""
    if attn_impl not in ATTN_IMPLS:
        raise AttentionError(f"attn_impl {attn_impl!r} is not supported; expected one of {sorted(ATTN_IMPLS)}")
    return ATTN_IMPLS[attn_impl]


def attn_impl_of(name: str) -> str:
    impl = get(name).attn_impl
    if impl is None:
        raise AttentionError(f"attention kind {name!r} has no attn_impl value of the paper's format")
    return impl


def attention_weights(q, k, kind: str, key_mask=None, quant=None, scale=None) -> torch.Tensor:
    """Causal [B, H, T, T] float32 maps of `kind` (k already has q's heads; key_mask [B, T])."""
    valid = visible_mask(q.shape[-2], k.shape[-2], key_mask, q.device)
    return reference.reference_weights(q, k, get(kind).normalise, valid, scale, quant)


# --------------------------------------------------------------------------- fast paths
def _sdpa_softmax(q, k, v, key_mask, mask, scale):
    """Softmax through torch's SDPA (any device, any mask). A query that sees no key (left padding)
    gets a zero row, as in the reference (SDPA itself may give NaN there on some backends)."""
    k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    tq, tk = q.shape[-2], k.shape[-2]
    if key_mask is None and mask is None and tq == tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale), "sdpa"
    valid = mask if mask is not None else visible_mask(tq, tk, key_mask, q.device)
    empty = ~valid.any(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=valid | empty, scale=scale)
    return out.masked_fill(empty, 0.0), "sdpa"   # unconditionally: asking whether any row is empty waits for the device


def right_padded_lengths(key_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Per-row lengths if `key_mask` [B, T] is right padding (1...1 0...0), else None."""
    if key_mask is None:
        return None
    lengths = key_mask.sum(dim=1)
    positions = torch.arange(key_mask.shape[1], device=key_mask.device)
    if torch.equal(key_mask.bool(), positions[None, :] < lengths[:, None]):
        return lengths.to(torch.int32)
    return None


def plain_tensor(t: torch.Tensor) -> torch.Tensor:
    """A kernel reads raw memory, so a tensor subclass must become a plain tensor first: quanto's
    activation quantizers hand over quantized tensors (ActivationQBytesTensor), whose raw
    memory is int8 data, not values (an illegal memory access in the kernel, seen on an H200)."""
    if type(t) is torch.Tensor:
        return t
    return t.dequantize() if hasattr(t, "dequantize") else t.as_subclass(torch.Tensor)


def _triton_softpick(q, k, v, key_mask, mask, scale):
    """The Triton kernel: CUDA, a supported head size, causal self-attention, right padding at most.
    QBENCH_SOFTPICK_KERNEL=0 forces the torch reference."""
    if (not q.is_cuda or os.environ.get("QBENCH_SOFTPICK_KERNEL", "1") == "0" or mask is not None
            or q.shape[-2] != k.shape[-2]):
        return None
    from . import triton_softpick

    lengths = right_padded_lengths(key_mask)
    if (not triton_softpick.is_available() or q.shape[-1] not in triton_softpick.HEAD_DIMS
            or (key_mask is not None and lengths is None)):
        return None
    q, k, v = (plain_tensor(t) for t in (q, k, v))
    label = "triton:" + triton_softpick.backend_label(q, k, v)   # the configs of the committed table that ran
    return triton_softpick.softpick_attention(q, k, v, seq_lens=lengths, scale=scale), label


register(AttentionKind("softmax", reference.softmax, "softmax(x)_i = e^{x_i} / sum_j e^{x_j}",
                       attn_impl="parallel_attn", fast=_sdpa_softmax))
register(AttentionKind("softpick", reference.softpick,
                       "softpick(x)_i = relu(e^{x_i} - 1) / (sum_j |e^{x_j} - 1| + 1e-6) (arXiv 2504.20966)",
                       attn_impl="parallel_softpick_attn", fast=_triton_softpick, fast_takes_masks=False))
register(AttentionKind("softmax1", reference.softmax1, "softmax+1 (off by one): e^{x_i} / (1 + sum_j e^{x_j})",
                       attn_impl="parallel_softmax_plus_one_attn"))
register(AttentionKind("rectified", reference.rectified,
                       "rectified softmax: softmax over the scores >= 0 only, zero row if there is none",
                       attn_impl="parallel_rectified_attn"))
