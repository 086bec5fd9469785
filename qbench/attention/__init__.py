"""The one attention dispatch used by every model qbench loads: any registered kind (kinds.py),
reference or fast path.

`attend(..., quant=...)` is where attention-side quantizers act: `quant` is None or an object
with optional callables `k`, `v` (on [B, Hkv, T, D]; K after RoPE, i.e. what a KV cache holds),
`scores`, `probs` (on [B, H, T, T] float32) and a bool `needs_maps` (scores or probs quantized:
the materialized maps path runs, never a fused kernel). `backend_log()` records which paths ran.
"""
import contextlib
import weakref

import torch

from .kinds import (KINDS, AttentionError, AttentionKind, attention_weights, get, names, plain_tensor,
                    right_padded_lengths)
from .reference import (causal_valid_mask, reference_weights, repeat_kv, softpick, softpick_reference,
                        visible_mask)

_BACKEND_LOGS: list[set] = []


@contextlib.contextmanager
def collecting(collectors: list):
    """A fresh set appended to `collectors` for the duration of the block (what code inside the
    block adds to every set of `collectors` ends up in it)."""
    seen: set = set()
    collectors.append(seen)
    try:
        yield seen
    finally:
        collectors.remove(seen)


def backend_log():
    """Collects the attention paths that run inside the block (e.g. "softpick:triton",
    "softmax:sdpa", "softpick:reference", "softmax:maps"): a cell records them."""
    return collecting(_BACKEND_LOGS)


def _ran(path: str) -> None:
    for seen in _BACKEND_LOGS:
        seen.add(path)


_LAST_MASK: list = [None, None]   # [weak reference to the last 4D mask, ((its version, tq, tk), result)]


def _as_key_mask(mask: torch.Tensor, tq: int, tk: int):
    """(key_mask, None) when a 4D visibility mask is the causal one with key padding, else (None, mask).
    The check waits for the device; every layer of a forward gets the same mask object, so the
    answer for the last mask is remembered (one wait per forward, not per layer)."""
    if mask.is_inference():   # no version counter: a change in place could not be seen
        return _reduce_mask(mask, tq, tk)
    ref, memo = _LAST_MASK
    if ref is not None and ref() is mask and memo[0] == (mask._version, tq, tk):
        return memo[1]
    result = _reduce_mask(mask, tq, tk)
    _LAST_MASK[:] = [weakref.ref(mask), ((mask._version, tq, tk), result)]
    return result


def _reduce_mask(mask: torch.Tensor, tq: int, tk: int):
    if mask.dtype != torch.bool:      # an additive float mask: 0 where visible
        mask = mask == 0
    if mask.dim() != 4:
        raise AttentionError(f"attention mask must be [B, 1, Tq, Tk], got shape {tuple(mask.shape)}")
    mask = mask[..., :tk]
    if mask.shape[1] == 1 and tq == tk:
        key_mask = mask[:, 0, -1, :]
        if torch.equal(mask, visible_mask(tq, tk, key_mask, mask.device).expand_as(mask)):
            return key_mask, None
    return None, mask


def attend(q, k, v, kind: str, key_mask=None, need_weights: bool = False, quant=None, *,
           mask=None, scale: float | None = None, observe=None):
    """Causal attention of `kind` (a name in qbench.attention.kinds.KINDS).

    q [B, H, Tq, D]; k, v [B, Hkv, Tk, D] (GQA); key_mask [B, Tk] (1 = token, 0 = pad), or instead
    `mask` bool [B|1, 1, Tq, Tk] (True = visible; e.g. transformers' mask with sliding windows or
    a KV cache; reduced to key_mask when it is the plain causal one). scale: multiplies q.k
    (default: divides by sqrt(D)). observe: optional callable(q, k, kind, scale, key_mask, mask)
    given q and k (after RoPE and `quant`) before attention runs (diagnostics).

    Returns (output [B, H, Tq, D], weights [B, H, Tq, Tk] float32 or None). The kind's fast path
    (SDPA, the Triton kernel on CUDA) runs unless weights are asked for or `quant` needs the maps.
    """
    spec = get(kind)
    if mask is not None:
        if key_mask is not None:
            raise AttentionError("attend: give key_mask or mask, not both")
        key_mask, mask = _as_key_mask(mask, q.shape[-2], k.shape[-2])
    if key_mask is not None and bool(key_mask.all()):
        key_mask = None
    if torch.is_autocast_enabled(q.device.type):  # RoPE leaves q, k in fp32 next to a 16-bit v
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if quant is not None:
        k = quant.k(k) if getattr(quant, "k", None) else k
        v = quant.v(v) if getattr(quant, "v", None) else v
    if observe is not None:
        observe(q, k, kind, scale, key_mask, mask)
    maps = need_weights or (quant is not None and getattr(quant, "needs_maps", False))
    if not maps and spec.fast is not None:
        fast = spec.fast(q, k, v, key_mask, mask, scale)
        if fast is not None:
            _ran(f"{kind}:{fast[1]}")
            return fast[0], None
    _ran(f"{kind}:{'maps' if maps else 'reference'}")
    valid = mask if mask is not None else visible_mask(q.shape[-2], k.shape[-2], key_mask, q.device)
    weights = reference_weights(q, repeat_kv(k, q.shape[1]), spec.normalise, valid, scale, quant)
    out = (weights @ repeat_kv(v, q.shape[1]).float()).to(q.dtype)
    return out, (weights if need_weights else None)


__all__ = ["KINDS", "AttentionError", "AttentionKind", "attend", "attention_weights", "backend_log",
           "causal_valid_mask", "get", "names", "plain_tensor", "repeat_kv", "right_padded_lengths",
           "softpick", "softpick_reference", "visible_mask"]
