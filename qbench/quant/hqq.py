"""hqq: Half-Quadratic Quantization through the hqq library (HQQLinear), 8/4/3/2 bits.

Asymmetric, per group of `group_size` input columns (axis 1), scale and zero point found by
HQQ's half-quadratic optimizer (the library default), no calibration data. Scales and zeros
stay in the model's dtype (HQQ's compute dtype). On CPU the PYTORCH backend is used.
Effective bits: measured from what HQQLinear stores (packed W_q, scales, zeros; 3-bit packs
10 values per int32, i.e. 3.2 bits).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Field, LayerwiseMethod, register, storage_bits



def _meta_tensors(meta) -> list[torch.Tensor]:
    if isinstance(meta, torch.Tensor):
        return [meta]
    if isinstance(meta, dict):
        return [t for v in meta.values() for t in _meta_tensors(v)]
    return []


@register
class HQQ(LayerwiseMethod):
    name = "hqq"
    bits = (8, 4, 3, 2)
    libraries = ("hqq",)
    imports = ("hqq.core.quantize",)
    weight_fields = {
        "group_size": Field(int, min=1, doc="input columns per scale/zero group"),
    }

    @torch.no_grad()
    def quantize_layer(self, linear: nn.Linear, recipe, bits: int) -> nn.Module:
        from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear

        dev = linear.weight.device
        if dev.type == "cpu":
            HQQLinear.set_backend(HQQBackend.PYTORCH)
        cfg = BaseQuantizeConfig(nbits=bits, group_size=recipe.weight["group_size"])
        return HQQLinear(linear, cfg, del_orig=True, compute_dtype=linear.weight.dtype, device=str(dev))

    def dequantize(self, module):
        return module.dequantize()

    def bits_per_weight(self, module, recipe, bits):
        out_f, in_f = module.meta["shape"]
        return storage_bits(module.W_q, *_meta_tensors(module.meta)) / (out_f * in_f)
