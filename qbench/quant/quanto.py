"""quanto: optimum-quanto. Weights int8 (per output channel, absmax), int4 / int2 (per group,
asymmetric min/max with a float shift); optionally (`weight.activations: int8 | float8`)
quanto's own static activation quantizers, int8 or float8 (e4m3), with scales from quanto's
Calibration() pass over the calibration batch (inputs and outputs of each quantized linear;
quanto "streamlines" away output quantization that feeds no quantized module). With
`activations: null` it is weight-only and uses no data (the recipe's generic `activation:`
section, qbench's dynamic quantizer, works with it like with any weight method).

group_size: null keeps quanto's own choice (128, lowered by 32 until it divides in_features,
else per channel); an integer overrides it for int4/int2 (int8 is always per channel).
Effective bits: measured from the frozen QTensors (data, scales, shifts).
"""
from __future__ import annotations

import torch

from .base import (Field, Method, QuantError, RecipeError, calibration_batches, eval_mode, forward, register,
                   storage_bits)



@register
class Quanto(Method):
    name = "quanto"
    bits = (8, 4, 2)
    libraries = ("optimum-quanto",)
    imports = ("optimum.quanto",)
    weight_fields = {
        "group_size": Field(int, default=None, nullable=True, min=1,
                            doc="int4/int2 group size; null = quanto's default"),
        "activations": Field(str, default=None, nullable=True, choices=("int8", "float8"),
                             doc="quanto's static activation quantizers (calibrated); null = none"),
    }

    def needs_calib(self, recipe):
        return recipe.weight["activations"] is not None

    def validate(self, recipe):
        if recipe.weight["activations"] is not None and recipe.activation is not None:
            raise RecipeError(recipe.source, "activation", "quanto quantizes the activations itself here "
                              "(weight.activations); remove one of the two")

    def activation_token(self, recipe):
        return {"int8": "8", "float8": "FP8", None: None}[recipe.weight["activations"]]

    def group_size(self, recipe, bits):
        return recipe.weight["group_size"] if bits in (4, 2) else None

    @torch.no_grad()
    def apply(self, model, names, recipe, bits, calib):
        from optimum.quanto import Calibration, freeze, qfloat8, qint2, qint4, qint8, quantize

        wq = {8: qint8, 4: qint4, 2: qint2}[bits]
        aq = None
        if recipe.weight["activations"] is not None:
            aq = {"int8": qint8, "float8": qfloat8}[recipe.weight["activations"]]
        quantize(model, weights=wq, activations=aq, include=list(names))
        gs = recipe.weight["group_size"]
        if gs is not None and bits in (4, 2):
            for n in names:
                model.get_submodule(n).weight_group_size = gs
        if aq is not None:
            with eval_mode(model), Calibration():
                for b in calibration_batches(model, calib):
                    forward(model, b)
            bad = [n for n in names if float(model.get_submodule(n).input_scale) == 1.0]
            if bad:
                raise QuantError(f"quanto: calibration left the input scale of {len(bad)} layers at "
                                 f"its initial value (never calibrated): {bad[:3]}")
        freeze(model)
        return {}

    def dequantize(self, module):
        w = module.weight
        return w.dequantize() if hasattr(w, "dequantize") else w

    def bits_per_weight(self, module, recipe, bits):
        return storage_bits(module.weight) / (module.in_features * module.out_features)

    def after(self, model, names, recipe, bits, calib):
        if recipe.weight["activations"] is None:
            return {}
        scales = {n: float(model.get_submodule(n).input_scale) for n in names}
        return {"activation": {"dtype": recipe.weight["activations"], "static_input_scales": scales}}
