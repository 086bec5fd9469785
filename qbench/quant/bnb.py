"""bnb: bitsandbytes. 8-bit: LLM.int8 (Linear8bitLt: int8 weights with one absmax scale per
row, outlier input features above `threshold` computed in higher precision); 4-bit:
Linear4bit with the `quant_type` data type (nf4 or fp4), absmax per block of `blocksize`
weights, optionally compressed ("double quantization", `compress_statistics`).
bitsandbytes 0.50 runs both on CPU. No calibration data.
Effective bits: measured from what the module stores (int8/packed 4-bit data, absmax scales,
the nested scales of double quantization; the 16-entry code tables are not counted).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Field, LayerwiseMethod, MethodUnavailable, RecipeError, register, storage_bits



@register
class BNB(LayerwiseMethod):
    name = "bnb"
    bits = (8, 4)
    libraries = ("bitsandbytes",)
    imports = ("bitsandbytes",)
    weight_fields = {
        "quant_type": Field(str, default=None, nullable=True, choices=("nf4", "fp4"),
                            doc="4-bit data type (required when the recipe lists 4 bits)"),
        "blocksize": Field(int, default=64, choices=(64, 128, 256, 512, 1024, 2048, 4096),
                           doc="4-bit: weights per absmax block"),
        "compress_statistics": Field(bool, default=False, doc="4-bit: double quantization"),
        "threshold": Field(float, default=6.0, min=0.0, doc="8-bit: LLM.int8 outlier threshold"),
    }

    def validate(self, recipe):
        if 4 in recipe.bits and recipe.weight["quant_type"] is None:
            raise RecipeError(recipe.source, "weight.quant_type", "missing (required for 4-bit: nf4 or fp4)")

    def group_size(self, recipe, bits):
        return None  # blocks run over the flattened weight; no divisibility needed

    def check_available(self, recipe, device):
        super().check_available(recipe, device)
        if device.type not in ("cpu", "cuda", "xpu"):
            raise MethodUnavailable(f"method 'bnb': bitsandbytes has no path on {device.type}")

    @torch.no_grad()
    def quantize_layer(self, linear: nn.Linear, recipe, bits: int) -> nn.Module:
        import bitsandbytes as bnb

        w = recipe.weight
        dev = linear.weight.device
        data = linear.weight.data.to("cpu", copy=True)  # bnb quantizes when moving off the CPU copy
        has_bias = linear.bias is not None
        if bits == 8:
            q = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                    has_fp16_weights=False, threshold=w["threshold"], device="cpu")
            q.weight = bnb.nn.Int8Params(data, requires_grad=False, has_fp16_weights=False)
        else:
            q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias,
                                  compute_dtype=linear.weight.dtype, quant_type=w["quant_type"],
                                  compress_statistics=w["compress_statistics"], device="cpu")
            q.weight = bnb.nn.Params4bit(data, requires_grad=False, quant_type=w["quant_type"],
                                         blocksize=w["blocksize"],
                                         compress_statistics=w["compress_statistics"])
        if has_bias:
            q.bias = nn.Parameter(linear.bias.data.to("cpu", copy=True), requires_grad=False)
        q = q.to(dev)
        if has_bias:
            q.bias.data = q.bias.data.to(linear.bias.dtype)
        return q

    def dequantize(self, module):
        import bitsandbytes as bnb

        w = module.weight
        if isinstance(module, bnb.nn.Linear8bitLt):
            return bnb.functional.int8_vectorwise_dequant(w.data, w.SCB)
        return bnb.functional.dequantize_4bit(w.data, w.quant_state)

    def bits_per_weight(self, module, recipe, bits):
        import bitsandbytes as bnb

        w = module.weight
        n = module.in_features * module.out_features
        if isinstance(module, bnb.nn.Linear8bitLt):
            return storage_bits(w.data, w.SCB) / n
        qs = w.quant_state
        parts = [w.data, qs.absmax]
        if getattr(qs, "nested", False):
            parts += [qs.state2.absmax, qs.offset]
        return storage_bits(*parts) / n
