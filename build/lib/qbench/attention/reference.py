"""Attention normalisers in plain torch: the float32 references every kernel is checked against.

Each normaliser maps scores [..., K] and a bool validity mask (True = the key counts; None = all
count) to weights over the last dim. Masked entries contribute to no sum and get weight 0, and a
row with nothing to attend to is exactly zero (never NaN), for every kind.

- softmax:   e^{x_i} / sum_j e^{x_j} (torch.softmax over the valid entries: shift m = their max).
- softpick:  relu(e^{x_i} - 1) / (sum_j |e^{x_j} - 1| + eps). Shift m = max(0, rowmax): numerator
  relu(e^{x-m} - e^{-m}), denominator sum |e^{x-m} - e^{-m}| + eps. Any shift is exact; clamping it
  at 0 keeps e^{-m} <= 1 (no overflow for any |x|) and makes rows whose scores are all <= 0 exactly
  zero. eps is added to the shifted denominator, as the paper's training kernel does.
- softmax1:  e^{x_i} / (1 + sum_j e^{x_j}) ("off by one"). Shift m = max(0, rowmax): e^{x-m} /
  (e^{-m} + sum e^{x-m}); the denominator is >= e^{-m} > 0 or >= 1, never zero.
- rectified: softmax over the entries with x >= 0 only (negative scores are masked out); a row
  without a non-negative valid score is zero.
The shift is detached: it cancels exactly, so gradients are those of the unshifted formula.
"""
import math

import torch

SOFTPICK_EPS = 1e-6


def _all_valid(scores, valid):
    return torch.ones_like(scores, dtype=torch.bool) if valid is None else valid.expand_as(scores)


def _softmax_over(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """torch.softmax over the `keep` entries of each row (stable: it shifts by the row max);
    rows where nothing is kept are zero (their scores are replaced before, so no NaN is formed)."""
    empty = ~keep.any(dim=-1, keepdim=True)
    filled = scores.masked_fill(~keep, float("-inf")).masked_fill(empty, 0.0)
    return torch.softmax(filled, dim=-1).masked_fill(empty, 0.0)


def softmax(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the last dim; `valid` (bool, broadcastable) marks entries that count."""
    if valid is None:
        return torch.softmax(scores, dim=-1)
    return _softmax_over(scores, _all_valid(scores, valid))


def softpick(scores: torch.Tensor, valid: torch.Tensor | None = None, eps: float = SOFTPICK_EPS) -> torch.Tensor:
    """Softpick over the last dim of `scores`; `valid` (bool, broadcastable) marks entries that count."""
    valid = _all_valid(scores, valid)
    filled = scores.masked_fill(~valid, 0.0)  # finite everywhere, so no inf/NaN reaches autograd
    m = filled.amax(dim=-1, keepdim=True).clamp_min(0.0).detach()
    shifted = torch.exp(filled - m) - torch.exp(-m)
    shifted = shifted.masked_fill(~valid, 0.0)
    return torch.relu(shifted) / (shifted.abs().sum(dim=-1, keepdim=True) + eps)


def softmax1(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax plus one in the denominator ("off by one") over the last dim."""
    valid = _all_valid(scores, valid)
    filled = scores.masked_fill(~valid, float("-inf"))
    m = filled.amax(dim=-1, keepdim=True).clamp_min(0.0).detach()   # max(0, -inf) = 0: all-masked rows
    e = torch.exp(filled - m)
    return e / (torch.exp(-m) + e.sum(dim=-1, keepdim=True))


def rectified(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Rectified softmax: softmax over the valid entries with score >= 0, zero elsewhere."""
    return _softmax_over(scores, _all_valid(scores, valid) & (scores >= 0))


def visible_mask(tq: int, tk: int, key_mask: torch.Tensor | None, device) -> torch.Tensor:
    """[B|1, 1, Tq, Tk] bool: key j is visible from query i. Causal with the queries at the end
    (query i sits at position tk - tq + i, as with a KV cache), and key j is not padding."""
    offset = tk - tq
    rows = torch.arange(tq, device=device)[:, None] + offset
    valid = (torch.arange(tk, device=device)[None, :] <= rows)[None, None]
    if key_mask is not None:
        valid = valid & key_mask.bool()[:, None, None, :]
    return valid


def causal_valid_mask(t: int, key_mask: torch.Tensor | None, device) -> torch.Tensor:
    """[B|1, 1, T, T] bool: key j is visible from query i (j <= i and key j is not padding)."""
    return visible_mask(t, t, key_mask, device)


def scaled_scores(q, k, scale: float | None = None) -> torch.Tensor:
    """q @ k^T in float32, divided by sqrt(head_dim) or times `scale` (as transformers' eager
    attention does); k already has q's heads."""
    scores = q.float() @ k.float().transpose(-1, -2)
    return scores / math.sqrt(q.shape[-1]) if scale is None else scores * scale


def reference_weights(q, k, normalise, valid, scale=None, quant=None) -> torch.Tensor:
    """Full [B, H, Tq, Tk] attention maps in float32. k already has H heads; `valid` as from
    visible_mask. `quant` (see qbench.attention): its `scores` and `probs` callables
    fake-quantize the scores (after masking is decided) and the normalised maps."""
    scores = scaled_scores(q, k, scale)
    if quant is not None and getattr(quant, "scores", None):
        scores = quant.scores(scores)
    weights = normalise(scores, valid)
    if quant is not None and getattr(quant, "probs", None):
        weights = quant.probs(weights)
    return weights


def softpick_reference(q, k, v, key_mask=None, eps: float = SOFTPICK_EPS, scale: float | None = None):
    """Softpick attention output [B, H, T, D] (k, v may have fewer heads: GQA)."""
    k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    valid = causal_valid_mask(q.shape[-2], key_mask, q.device)
    weights = softpick(scaled_scores(q, k, scale), valid, eps)
    return (weights @ v.float()).to(q.dtype)


def repeat_kv(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, Hkv, T, D] -> [B, H, T, D]; query head h uses kv head h // (H // Hkv)."""
    if x.shape[1] == num_heads:
        return x
    return x.repeat_interleave(num_heads // x.shape[1], dim=1)
