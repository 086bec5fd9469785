"""rtn: round-to-nearest weight quantization, written here. The baseline every other method is
compared against.

Grid (shared with gptq): per output row, over the whole row (group_size: null) or over groups
of `group_size` consecutive input columns.
- asymmetric: range [min(w, 0), max(w, 0)], scale = (max - min) / (2^b - 1), integer zero point
  round(-min / scale) in [0, 2^b - 1];
- symmetric: scale = 2 * absmax / (2^b - 1), fixed zero point 2^(b-1) (all 2^b levels used).
q = clamp(round(w / scale) + zero, 0, 2^b - 1); w_q = scale * (q - zero).
rtn itself can also use a float offset (`zero_point: float`, asymmetric only): the min-max grid of
GGUF's Q4_1 / Q5_1, scale = (max - min) / (2^b - 1), q = clamp(round((w - min) / scale)),
w_q = scale * q + min; on SmolLM2's Q4_1 weights it reproduces every linear layer exactly at 4 bits,
group 32 (tests/test_real_models.py), so the harness reports "no change" there.
Weights stay nn.Linear holding the fake-quantized values (in the model's dtype).

Effective bits per weight: b + (s + z) / g with g the group length (in_features when per
channel), s the bits of one scale in the model's dtype, z = b for an asymmetric zero point
(stored as a b-bit integer), s for a float offset, and 0 for symmetric. The GPTQ storage format,
with scales kept in the model's dtype.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Field, LayerwiseMethod, RecipeError, dtype_bits, register


def grid_params(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of `w` [rows, cols] (float32), each [rows, 1]."""
    maxq = 2 ** bits - 1
    w = w.float()
    if symmetric:
        amax = w.abs().amax(dim=1, keepdim=True)
        amax = torch.where(amax == 0, torch.ones_like(amax), amax)
        scale = 2 * amax / maxq
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        xmin = w.amin(dim=1, keepdim=True).clamp(max=0)
        xmax = w.amax(dim=1, keepdim=True).clamp(min=0)
        both0 = (xmin == 0) & (xmax == 0)
        xmin = torch.where(both0, -torch.ones_like(xmin), xmin)
        xmax = torch.where(both0, torch.ones_like(xmax), xmax)
        scale = (xmax - xmin) / maxq
        zero = torch.round(-xmin / scale)
    return scale, zero


def fake_quant(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize and dequantize `w` on the grid (broadcasting scale/zero), in float32."""
    maxq = 2 ** bits - 1
    q = torch.clamp(torch.round(w.float() / scale) + zero, 0, maxq)
    return scale * (q - zero)


def rtn_weight(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
               zero_point: str = "integer") -> torch.Tensor:
    """Round-to-nearest of a [out, in] weight; returns float32 of the same shape."""
    out_f, in_f = w.shape
    g = group_size or in_f
    if in_f % g:
        raise ValueError(f"group size {g} does not divide in_features {in_f}")
    wg = w.float().reshape(out_f * (in_f // g), g)
    if zero_point == "float":
        maxq = 2 ** bits - 1
        lo = wg.amin(dim=1, keepdim=True)
        scale = (wg.amax(dim=1, keepdim=True) - lo) / maxq
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        return (scale * torch.clamp(torch.round((wg - lo) / scale), 0, maxq) + lo).reshape(out_f, in_f)
    scale, zero = grid_params(wg, bits, symmetric)
    return fake_quant(wg, scale, zero, bits).reshape(out_f, in_f)


def fake_quant_bits(bits: int, group_size: int | None, symmetric: bool, in_features: int,
                    scale_dtype: torch.dtype, zero_point: str = "integer") -> float:
    g = group_size or in_features
    zero = 0 if symmetric else (dtype_bits(scale_dtype) if zero_point == "float" else bits)
    return bits + (dtype_bits(scale_dtype) + zero) / g


WEIGHT_FIELDS = {
    "group_size": Field(int, nullable=True, min=1,
                        doc="columns per scale/zero group; null = one group per output channel"),
    "symmetric": Field(bool, doc="symmetric grid (fixed zero point) or asymmetric (min/max)"),
}


@register
class RTN(LayerwiseMethod):
    name = "rtn"
    bits = (2, 3, 4, 5, 6, 7, 8)
    weight_fields = {**WEIGHT_FIELDS,
                     "zero_point": Field(str, default="integer", choices=("integer", "float"),
                                         doc="asymmetric grid: an integer zero point over a range that holds 0 "
                                             "(gptq's grid), or a float offset at the group minimum (GGUF's Q4_1)")}

    def validate(self, recipe):
        if recipe.weight["zero_point"] == "float" and recipe.weight["symmetric"]:
            raise RecipeError(recipe.source, "weight.zero_point", "a float offset needs symmetric: false")

    @torch.no_grad()
    def quantize_layer(self, linear: nn.Linear, recipe, bits: int) -> nn.Module:
        w, cfg = linear.weight, recipe.weight
        wq = rtn_weight(w.data, bits, cfg["group_size"], cfg["symmetric"], cfg["zero_point"])
        w.data.copy_(wq.to(w.dtype))
        return linear

    def dequantize(self, module: nn.Module) -> torch.Tensor:
        return module.weight

    def bits_per_weight(self, module, recipe, bits):
        cfg = recipe.weight
        return fake_quant_bits(bits, cfg["group_size"], cfg["symmetric"], module.in_features, module.weight.dtype,
                               cfg["zero_point"])
