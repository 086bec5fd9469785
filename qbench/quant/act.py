"""act: weight + activation fake quantization, written here.

Any weight method of the registry quantizes the weights (`weight: {method: rtn, bits: 4,
...}` with that method's own fields); then every quantized linear layer is wrapped in
ActQuantLinear, which fake-quantizes its INPUT dynamically before the layer runs:
per token (each row of the last dimension; or per_tensor), symmetric
  scale = absmax / (2^(a-1) - 1), x_q = clamp(round(x / scale), -2^(a-1), 2^(a-1)-1) * scale
or asymmetric on rtn's min/max grid. No calibration data of its own (the weight method may
need some, e.g. gptq).

Bits rule: the sweep's `bits` is always the WEIGHT width. An act recipe pins it in
`weight.bits`; its top-level `bits` is [weight.bits] (written or left out). A recipe is one
W{w}A{a} point: w8a8-rtn, w4a8-rtn, w4a4-rtn, ...

Proof it acted: the weights are measured as for any method; in addition one forward pass
(the first calibration samples, else random tokens) measures each layer's relative input
quantization error, and a layer whose quantizer never ran or changed nothing is an error.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import (NOOP_TOL, Field, Method, QuantizerDidNothing, RecipeError, eval_mode, forward, get_method,
                   methods, model_device, register)
from .rtn import fake_quant, grid_params

CODE_VERSION = "1"


def fake_quant_act(x: torch.Tensor, bits: int, granularity: str = "per_token",
                   symmetric: bool = True) -> torch.Tensor:
    shape, dtype = x.shape, x.dtype
    xf = x.float().reshape(-1, shape[-1]) if granularity == "per_token" else x.float().reshape(1, -1)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = xf.abs().amax(dim=1, keepdim=True) / qmax
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        xq = torch.clamp(torch.round(xf / scale), -qmax - 1, qmax) * scale
    else:
        scale, zero = grid_params(xf, bits, symmetric=False)
        xq = fake_quant(xf, scale, zero, bits)
    return xq.reshape(shape).to(dtype)


class ActQuantLinear(nn.Module):
    """Wraps a (weight-quantized) linear layer; fake-quantizes its input on every call."""

    def __init__(self, inner: nn.Module, bits: int, granularity: str = "per_token",
                 symmetric: bool = True, weight_method: str = "none"):
        super().__init__()
        self.inner = inner
        self.weight_method = weight_method   # registry name of the method that quantized `inner`
        self.bits, self.granularity, self.symmetric = bits, granularity, symmetric
        self.in_features = getattr(inner, "in_features", None)
        self.out_features = getattr(inner, "out_features", None)
        self.stats: list[float] | None = None   # [sum |x_q - x|^2, sum |x|^2, calls] when tracking

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = fake_quant_act(x, self.bits, self.granularity, self.symmetric)
        if self.stats is not None:
            self.stats[0] += float((xq.float() - x.float()).pow(2).sum())
            self.stats[1] += float(x.float().pow(2).sum())
            self.stats[2] += 1
        return self.inner(xq)

    def extra_repr(self) -> str:
        return (f"a_bits={self.bits}, {self.granularity}, symmetric={self.symmetric}, "
                f"weights={self.weight_method}")


def inner_recipe(recipe):
    """The weight-only recipe the inner method runs."""
    from .recipe import Recipe

    w = dict(recipe.weight)
    method, bits = w.pop("method"), w.pop("bits")
    return Recipe(name=recipe.name, method=method, bits=(bits,), weight=w, activation=None,
                  layers=recipe.layers, calib=recipe.calib, description=recipe.description,
                  source=recipe.source)


ACT_FIELDS = {
    "bits": Field(int, min=2, max=8, doc="activation width"),
    "granularity": Field(str, default="per_token", choices=("per_token", "per_tensor")),
    "symmetric": Field(bool, default=True),
}


@register
class Act(Method):
    name = "act"                      # widths: those of its weight method (supported_bits)
    code_version = CODE_VERSION
    activation_fields = ACT_FIELDS
    activation_required = True

    # ---- recipe
    def _inner(self, weight) -> Method:
        return get_method(weight["method"])

    def weight_schema(self, raw_weight, source):
        if "method" not in raw_weight:
            raise RecipeError(source, "weight.method", "missing (required: the weight method, e.g. rtn)")
        name = raw_weight["method"]
        known = methods()
        if not isinstance(name, str) or name not in known:
            raise RecipeError(source, "weight.method", f"unknown method {name!r}; known: {sorted(known)}")
        inner = known[name]
        if name == self.name or inner.activation_required:
            raise RecipeError(source, "weight.method", f"{name!r} cannot be the weight method of 'act'")
        rest = {k: v for k, v in raw_weight.items() if k not in ("method", "bits")}
        return {"method": Field(str), "bits": Field(int), **inner.weight_schema(rest, source)}

    def supported_bits(self, weight):
        return self._inner(weight).supported_bits(weight)

    def default_bits(self, weight):
        return (weight["bits"],)

    def validate(self, recipe):
        inner = self._inner(recipe.weight)
        wb = recipe.weight["bits"]
        if wb not in inner.supported_bits(recipe.weight):
            raise RecipeError(recipe.source, "weight.bits", f"{wb}-bit is not supported by method "
                              f"{inner.name!r} (supports {list(inner.supported_bits(recipe.weight))})")
        if tuple(recipe.bits) != (wb,):
            raise RecipeError(recipe.source, "bits", f"an act recipe supports exactly its weight width: "
                              f"bits must be [{wb}] (weight.bits), got {list(recipe.bits)}")
        inner.validate(inner_recipe(recipe))

    def needs_calib(self, recipe):
        return self._inner(recipe.weight).needs_calib(inner_recipe(recipe))

    def group_size(self, recipe, bits):
        return self._inner(recipe.weight).group_size(inner_recipe(recipe), bits)

    def library_versions(self, recipe):
        return self._inner(recipe.weight).library_versions(inner_recipe(recipe))

    def code_versions(self, recipe):
        return {self.name: self.code_version,
                **self._inner(recipe.weight).code_versions(inner_recipe(recipe))}

    # ---- run
    def check_available(self, recipe, device):
        self._inner(recipe.weight).check_available(inner_recipe(recipe), device)

    def apply(self, model, names, recipe, bits, calib):
        inner, ir = self._inner(recipe.weight), inner_recipe(recipe)
        extra = inner.apply(model, names, ir, bits, calib) or {}
        a = recipe.activation
        for n in names:
            model.set_submodule(n, ActQuantLinear(model.get_submodule(n), a["bits"], a["granularity"],
                                                  a["symmetric"], weight_method=inner.name))
        return extra

    def dequantize(self, module):
        if not isinstance(module, ActQuantLinear):
            raise TypeError(f"expected ActQuantLinear, got {type(module).__name__}")
        return get_method(module.weight_method).dequantize(module.inner)

    def bits_per_weight(self, module, recipe, bits):
        return self._inner(recipe.weight).bits_per_weight(module.inner, inner_recipe(recipe), bits)

    @torch.no_grad()
    def after(self, model, names, recipe, bits, calib):
        inner, ir = self._inner(recipe.weight), inner_recipe(recipe)
        extra = dict(inner.after(model, names, ir, bits, calib) or {})
        a = recipe.activation
        ids, probe = _probe_ids(model, calib)
        info = {"bits": a["bits"], "granularity": a["granularity"], "symmetric": a["symmetric"],
                "probe": probe, "error": None, "layers": {}}
        if ids is not None:
            wraps = {n: model.get_submodule(n) for n in names}
            for w in wraps.values():
                w.stats = [0.0, 0.0, 0]
            try:
                with eval_mode(model):
                    forward(model, ids.to(model_device(model)))
            finally:
                stats = {n: w.stats for n, w in wraps.items()}
                for w in wraps.values():
                    w.stats = None
            silent = [n for n, s in stats.items() if s[2] == 0]
            if silent:
                raise QuantizerDidNothing(f"{recipe.source}: the activation quantizer of {len(silent)} "
                                          f"layers never ran in a forward pass: {silent[:5]}")
            errs = {n: math.sqrt(s[0] / s[1]) if s[1] > 0 else 0.0 for n, s in stats.items()}
            unchanged = [n for n, e in errs.items() if e <= NOOP_TOL]
            if unchanged:
                raise QuantizerDidNothing(f"{recipe.source}: activation quantization changed no input "
                                          f"of {len(unchanged)} layers: {unchanged[:5]}")
            info["layers"] = errs
            info["error"] = math.sqrt(sum(s[0] for s in stats.values()) / sum(s[1] for s in stats.values()))
        extra["activation"] = info
        return extra


def _probe_ids(model, calib):
    if calib is not None:
        return calib[:4], "calib[:4]"
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab:
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, vocab, (2, 64), generator=g), "random tokens [2, 64], seed 0"
    return None, "none (no calibration batch and no config.vocab_size): activation error not measured"
