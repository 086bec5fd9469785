"""The paper's Table 2 diagnostics as pure functions of tensors.

Definitions (../shared/reference/paper.md, Table 2):
- sink rate (Gu et al., "When Attention Sink Emerges", their released eval code): for each
  sequence, layer and head, the attention to the FIRST key averaged over ALL query positions
  (query position 0 included, as Gu et al. do: their average for key 0 runs over every query);
  the sink rate is the share of (sequence, layer, head) triples where that average exceeds eps
  (strictly). With one sequence this is the share of (layer, head) pairs.
- attention sparsity: share of exact zeros in the causal part of the attention maps (lower
  triangle including the diagonal: query i, keys 0..i).
- kurtosis: Pearson's m4 / m2^2 (central moments; a normal distribution gives 3, not 0).
- min / max activation: the extremes of the hidden-state values.

Attention maps are given per layer as tensors [..., H, T, T] (the model's `output_attentions`
shape is [B, H, T, T]), as a sequence of such tensors or one tensor [L, ..., H, T, T].
"""
from __future__ import annotations

from typing import Sequence

import torch

# --------------------------------------------------------------------------- attention maps


def _layers(attention_maps) -> list[torch.Tensor]:
    if isinstance(attention_maps, torch.Tensor):
        return list(attention_maps.unbind(0)) if attention_maps.dim() >= 4 else [attention_maps]
    return list(attention_maps)


def causal_mask(rows: int, keys: int, row_offset: int = 0, device=None) -> torch.Tensor:
    """[rows, keys] bool: key j is in the causal part of query row_offset + r (j <= row)."""
    r = torch.arange(row_offset, row_offset + rows, device=device)
    return torch.arange(keys, device=device)[None, :] <= r[:, None]


def attention_row_stats(weights: torch.Tensor, row_offset: int = 0, include_first_query: bool = True):
    """Sufficient statistics of a block of attention rows.

    weights [..., R, K]: rows row_offset .. row_offset+R-1 of causal attention maps (keys 0..K-1).
    Returns (first_sum [...] float64: sum over the rows of the attention to key 0,
             first_count: number of rows summed,
             zeros [...] int64: exact zeros in the causal part of these rows,
             causal_count: causal entries per map in these rows).
    """
    r, k = weights.shape[-2:]
    causal = causal_mask(r, k, row_offset, weights.device)
    zeros = ((weights == 0) & causal).sum(dim=(-2, -1))
    first = weights[..., 0]
    if not include_first_query and row_offset == 0:
        first = first[..., 1:]
    return first.double().sum(-1), first.shape[-1], zeros, int(causal.sum())


def first_token_attention(weights: torch.Tensor, include_first_query: bool = True) -> torch.Tensor:
    """[..., H]: attention to the first key averaged over query positions, from maps [..., H, T, T]."""
    first_sum, count, _, _ = attention_row_stats(weights, 0, include_first_query)
    return first_sum / count


def sink_rate(attention_maps, eps: float = 0.3, include_first_query: bool = True) -> float:
    """Share (0..1) of (sequence, layer, head) whose mean attention to the first token exceeds eps."""
    per_layer = [first_token_attention(w, include_first_query) > eps for w in _layers(attention_maps)]
    flags = torch.stack([f.flatten() for f in per_layer])
    return float(flags.double().mean())


def attention_sparsity(attention_maps) -> float:
    """Share (0..1) of exact zeros in the causal part (lower triangle incl. diagonal) of the maps."""
    zeros = total = 0
    for w in _layers(attention_maps):
        _, _, z, per_map = attention_row_stats(w)
        zeros += int(z.sum())
        total += per_map * z.numel()
    return zeros / total


# --------------------------------------------------------------------------- hidden states


def kurtosis(values) -> float:
    """Pearson kurtosis m4 / m2^2 of all values (float64); normal -> 3, uniform -> 1.8."""
    if isinstance(values, torch.Tensor):
        x = values.detach().double().flatten()
    else:
        x = torch.cat([v.detach().double().flatten() for v in values])
    d = x - x.mean()
    d2 = d * d
    return float(x.numel() * (d2 * d2).sum() / d2.sum() ** 2)


def activation_extremes(hidden_states) -> tuple[float, float]:
    """(min, max) over all values of a tensor or a sequence of tensors."""
    tensors = [hidden_states] if isinstance(hidden_states, torch.Tensor) else list(hidden_states)
    return min(float(t.min()) for t in tensors), max(float(t.max()) for t in tensors)


class Moments:
    """Streaming count, mean, central moment sums M2..M4, min and max (float64), mergeable exactly
    (Pebay's pairwise formulas), so kurtosis over many tensors needs no concatenation."""

    __slots__ = ("n", "mean", "m2", "m3", "m4", "min", "max")

    def __init__(self, n=0, mean=0.0, m2=0.0, m3=0.0, m4=0.0, min=float("inf"), max=float("-inf")):
        self.n = int(n)
        self.mean, self.m2, self.m3, self.m4, self.min, self.max = map(float, (mean, m2, m3, m4, min, max))

    @classmethod
    def of(cls, values: torch.Tensor) -> "Moments":
        return cls.of_rows(values.reshape(1, -1))[0]

    @classmethod
    def of_rows(cls, values: torch.Tensor) -> list["Moments"]:
        """One Moments per row of values [R, ...] (all other dims flattened), in one pass of ops."""
        x = values.detach().flatten(1).double()
        mean = x.mean(1, keepdim=True)
        d = x - mean
        d2 = d * d
        lo, hi = torch.aminmax(x, dim=1)
        sums = torch.stack([mean[:, 0], d2.sum(1), (d2 * d).sum(1), (d2 * d2).sum(1), lo, hi], 1).tolist()
        return [cls(x.shape[1], *row) for row in sums]

    def merge(self, other: "Moments") -> "Moments":
        if other.n == 0:
            return Moments(*self.as_list())
        if self.n == 0:
            return Moments(*other.as_list())
        na, nb = self.n, other.n
        n = na + nb
        delta = other.mean - self.mean
        mean = self.mean + delta * nb / n
        m2 = self.m2 + other.m2 + delta ** 2 * na * nb / n
        m3 = (self.m3 + other.m3 + delta ** 3 * na * nb * (na - nb) / n ** 2
              + 3 * delta * (na * other.m2 - nb * self.m2) / n)
        m4 = (self.m4 + other.m4 + delta ** 4 * na * nb * (na * na - na * nb + nb * nb) / n ** 3
              + 6 * delta ** 2 * (na * na * other.m2 + nb * nb * self.m2) / n ** 2
              + 4 * delta * (na * other.m3 - nb * self.m3) / n)
        return Moments(n, mean, m2, m3, m4, min(self.min, other.min), max(self.max, other.max))

    @staticmethod
    def merge_all(items: Sequence["Moments"]) -> "Moments":
        total = Moments()
        for m in items:
            total = total.merge(m)
        return total

    @property
    def kurtosis(self) -> float:
        return self.n * self.m4 / self.m2 ** 2 if self.m2 > 0 else float("nan")

    def as_list(self) -> list:
        return [self.n, self.mean, self.m2, self.m3, self.m4, self.min, self.max]


__all__ = ["Moments", "activation_extremes", "attention_row_stats", "attention_sparsity", "causal_mask",
           "first_token_attention", "kurtosis", "sink_rate"]
