"""KV-cache and attention-map quantization: the recipe's `kv_cache:` and `attention:` sections.

An AttnQuant is installed as `attn_quant` on every attention module (the modules that call
qbench.attention.attend); attend calls its `k` and `v` on [B, Hkv, T, D] (K after RoPE: what a
KV cache holds), before any attention path, and, with `needs_maps` (an `attention:` section),
`scores` on the [B, H, Tq, Tk] float32 scores (scaled q.k, before masking) and `probs` on the
maps after softmax / softpick, on the materialized maps path (backend "<kind>:maps", which
qbench.attention.backend_log records).

KV cache (`kv_cache: {bits | format, k_granularity, v_granularity, group_size, token_block,
symmetric, sink_tokens}`), one scale per slice:
- per_token: per (batch, head, token), over head_dim;
- per_channel: per (batch, head, channel), over blocks of `token_block` consecutive tokens
  (the whole sequence when null) - KIVI's key quantization (K per channel, V per token);
- per_group: per token, over groups of `group_size` consecutive channels of head_dim.
int grids: asymmetric min/max (the default, as KIVI) or symmetric (qbench.quant.formats);
fp8: E4M3 with s = absmax / 448 over the same slices.
`sink_tokens: N` keeps positions 0..N-1 in full precision and out of every slice's statistics
(the usual attention-sink protection).

Attention maps (`attention: {probs_bits, probs_scale, scores_bits}`):
- probabilities (after softmax / softpick; in [0, 1], unsigned, zero point 0):
  p_q = clamp(round(p / s), 0, 2^b - 1) * s with s = 1 / (2^b - 1) (probs_scale: fixed, one
  global grid) or s = max_j p_ij / (2^b - 1) per row (probs_scale: row_max; s = 1 for an
  all-zero row, which softpick can produce);
- scores (symmetric, per row): s = max |x_ij| / (2^(b-1) - 1) over the row's causal entries
  (key j <= query i, offset for Tk > Tq), x_q = clamp(round(x / s), -2^(b-1), 2^(b-1) - 1) * s,
  applied to the whole row (masked entries are masked afterwards).
round = torch.round (half to even); the grids are checked bit-exactly in tests/test_quant_attn.py.
"""
from __future__ import annotations

import torch

from . import formats



# --------------------------------------------------------------------------- the grids
def _slices(x: torch.Tensor, cfg, dim: int) -> torch.Tensor:
    """x on cfg's grid with one scale per slice along `dim` (float32)."""
    if cfg.format == "fp8":
        return formats.fp8_e4m3(x, dim)
    if cfg.symmetric:
        return formats.int_symmetric(x, cfg.bits, dim)
    return formats.int_minmax(x, cfg.bits, dim)


def kv_fake_quant(x: torch.Tensor, cfg, granularity: str) -> torch.Tensor:
    """K or V [B, H, T, D] on the KVCacheConfig `cfg`'s grid, in x's dtype."""
    n = min(cfg.sink_tokens, x.shape[2])
    sink, rest = x[:, :, :n], x[:, :, n:]
    if rest.shape[2] == 0:
        return x
    r = rest.float()
    if granularity == "per_token":
        q = _slices(r, cfg, -1)
    elif granularity == "per_group":
        b, h, t, d = r.shape
        q = _slices(r.reshape(b, h, t, d // cfg.group_size, cfg.group_size), cfg, -1).reshape(b, h, t, d)
    else:  # per_channel, over blocks of tokens
        block = cfg.token_block or r.shape[2]
        q = torch.cat([_slices(c, cfg, 2) for c in r.split(block, dim=2)], dim=2)
    q = q.to(x.dtype)
    return torch.cat([sink, q], dim=2) if n else q


def causal_entries(tq: int, tk: int, device) -> torch.Tensor:
    """[Tq, Tk] bool: key j is visible from query i (j <= i + Tk - Tq)."""
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(diagonal=tk - tq)


def scores_fake_quant(x: torch.Tensor, bits: int) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    visible = causal_entries(x.shape[-2], x.shape[-1], x.device)
    s = x.float().masked_fill(~visible, 0).abs().amax(dim=-1, keepdim=True) / qmax
    s = torch.where(s == 0, torch.ones_like(s), s)
    return torch.clamp(torch.round(x.float() / s), -qmax - 1, qmax) * s


def probs_fake_quant(p: torch.Tensor, bits: int, scale: str) -> torch.Tensor:
    qmax = 2 ** bits - 1
    p = p.float()
    if scale == "fixed":
        s = torch.tensor(1.0 / qmax, dtype=torch.float32, device=p.device)
    else:
        s = p.amax(dim=-1, keepdim=True) / qmax
        s = torch.where(s == 0, torch.ones_like(s), s)
    return torch.clamp(torch.round(p / s), 0, qmax) * s


# --------------------------------------------------------------------------- the hook object
class AttnQuant:
    """What attend() calls (see qbench.attention): `k`, `v`, `scores`, `probs` (None where the
    recipe leaves them alone) and `needs_maps`."""

    def __init__(self, kv_cache, attention):
        self.kv_cache, self.attention = kv_cache, attention
        self.needs_maps = attention is not None   # (an attention section quantizes scores or probs)
        self.stats: dict[str, list[float]] | None = None   # name -> [sum |d|^2, sum |x|^2, calls]

    @property
    def k(self):
        return self._k if self.kv_cache is not None else None

    @property
    def v(self):
        return self._v if self.kv_cache is not None else None

    @property
    def scores(self):
        return self._scores if self.attention is not None and self.attention.scores_bits else None

    @property
    def probs(self):
        return self._probs if self.attention is not None and self.attention.probs_bits else None

    def _k(self, k):
        return self._track("k", k, kv_fake_quant(k, self.kv_cache, self.kv_cache.k_granularity))

    def _v(self, v):
        return self._track("v", v, kv_fake_quant(v, self.kv_cache, self.kv_cache.v_granularity))

    def _scores(self, x):
        xq = scores_fake_quant(x, self.attention.scores_bits)
        if self.stats is not None:   # the error over the causal entries (the others are masked)
            visible = causal_entries(x.shape[-2], x.shape[-1], x.device)
            self._track("scores", x.masked_fill(~visible, 0), xq.masked_fill(~visible, 0))
        return xq

    def _probs(self, p):
        return self._track("probs", p, probs_fake_quant(p, self.attention.probs_bits, self.attention.probs_scale))

    def _track(self, name, x, xq):
        if self.stats is not None:
            s = self.stats.setdefault(name, [0.0, 0.0, 0])
            s[0] += float((xq.float() - x.float()).pow(2).sum())
            s[1] += float(x.float().pow(2).sum())
            s[2] += 1
        return xq

    def quantized(self) -> list[str]:
        """The tensors this object quantizes ("k", "v", "scores", "probs")."""
        return [n for n in ("k", "v", "scores", "probs") if getattr(self, n) is not None]

    def __repr__(self):
        return f"AttnQuant(kv_cache={self.kv_cache}, attention={self.attention})"


# --------------------------------------------------------------------------- the model side
def attention_modules(model) -> list[tuple[str, torch.nn.Module]]:
    """The modules that call attend: qbench.model.attention_modules where it exists, else the
    modules carrying an `attn_quant` attribute."""
    try:
        from qbench.model import attention_modules as find
    except ImportError:
        return [(n, m) for n, m in model.named_modules() if hasattr(m, "attn_quant")]
    return list(find(model))


def head_dim(module) -> int | None:
    d = getattr(module, "head_dim", None)
    if d is None:
        d = getattr(getattr(module, "config", None), "head_dim", None)
    return d if isinstance(d, int) else None


def check(modules, recipe) -> None:
    """Before any work: a group size that does not divide head_dim, modules already quantized."""
    from .base import QuantError, RecipeError

    kv = recipe.kv_cache
    for name, m in modules:
        if m.attn_quant is not None:
            raise QuantError(f"{recipe.source}: attention module {name} already has an attention-side "
                             f"quantizer ({m.attn_quant!r}); quantize a fresh model")
        d = head_dim(m)
        if kv is not None and kv.group_size and d is not None and d % kv.group_size:
            raise RecipeError(recipe.source, "kv_cache.group_size",
                              f"{kv.group_size} does not divide head_dim={d} of {name}")


def install(modules, recipe) -> dict[str, AttnQuant]:
    out = {}
    for name, m in modules:
        m.attn_quant = out[name] = AttnQuant(recipe.kv_cache, recipe.attention)
    return out
