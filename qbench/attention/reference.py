"""Softpick attention in plain torch: the reference every kernel is checked against.

softpick(x)_i = relu(e^{x_i} - 1) / (sum_j |e^{x_j} - 1| + eps), masked entries in neither sum.
Computed with a shift m = max(0, rowmax): numerator relu(e^{x-m} - e^{-m}), denominator
sum |e^{x-m} - e^{-m}| + eps. Any shift is exact; clamping it at 0 keeps e^{-m} <= 1 (no
overflow for any |x|) and makes rows whose scores are all <= 0 exactly zero, never NaN.
eps is added to the shifted denominator, as the paper's training kernel does.
"""
import math

import torch

SOFTPICK_EPS = 1e-6


def softpick(scores: torch.Tensor, valid: torch.Tensor | None = None, eps: float = SOFTPICK_EPS) -> torch.Tensor:
    """Softpick over the last dim of `scores`; `valid` (bool, broadcastable) marks entries that count."""
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    filled = scores.masked_fill(~valid, 0.0)  # finite everywhere, so no inf/NaN reaches autograd
    m = filled.amax(dim=-1, keepdim=True).clamp_min(0.0).detach()
    shifted = torch.exp(filled - m) - torch.exp(-m)
    shifted = shifted.masked_fill(~valid, 0.0)
    return torch.relu(shifted) / (shifted.abs().sum(dim=-1, keepdim=True) + eps)


def causal_valid_mask(t: int, key_mask: torch.Tensor | None, device) -> torch.Tensor:
    """[B|1, 1, T, T] bool: key j is visible from query i (j <= i and key j is not padding)."""
    valid = torch.ones(t, t, dtype=torch.bool, device=device).tril()[None, None]
    if key_mask is not None:
        valid = valid & key_mask.bool()[:, None, None, :]
    return valid


def attention_weights(q, k, kind: str, key_mask=None, quant=None) -> torch.Tensor:
    """Full [B, H, T, T] attention maps in float32 (softmax or softpick). k already has H heads.
    `quant` (see qbench.attention): its `scores` and `probs` callables fake-quantize the scores
    (after masking is decided) and the normalised maps."""
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if quant is not None and getattr(quant, "scores", None):
        scores = quant.scores(scores)
    valid = causal_valid_mask(q.shape[-2], key_mask, q.device)
    if kind == "softpick":
        weights = softpick(scores, valid)
    else:
        # a query that sees no key (only with left padding) keeps its own position: no NaN rows
        valid = valid | torch.eye(q.shape[-2], dtype=torch.bool, device=q.device)
        weights = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)
    if quant is not None and getattr(quant, "probs", None):
        weights = quant.probs(weights)
    return weights


def softpick_reference(q, k, v, key_mask=None, eps: float = SOFTPICK_EPS):
    """Softpick attention output [B, H, T, D] (k, v may have fewer heads: GQA)."""
    k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    weights = softpick(scores, causal_valid_mask(q.shape[-2], key_mask, q.device), eps)
    return (weights @ v.float()).to(q.dtype)


def repeat_kv(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, Hkv, T, D] -> [B, H, T, D]; query head h uses kv head h // (H // Hkv)."""
    if x.shape[1] == num_heads:
        return x
    return x.repeat_interleave(num_heads // x.shape[1], dim=1)
