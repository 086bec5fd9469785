"""Activation quantization: the recipe's `activation:` section, with any weight method or none.

    activation: {bits: 8, granularity: per_token, symmetric: true}     # int (format: int)
    activation: {format: fp8}                                         # or mxfp4 / nvfp4

The INPUT of every selected linear layer is fake-quantized dynamically on every call, by a
forward pre-hook (base.InputChain): it runs after the layer's run-time input rotation, if any,
and whatever module the weight method left at the layer's name computes with its output.
- int, symmetric (the default): per token (each row of the last dim) or per tensor,
  s = absmax / (2^(a-1) - 1), x_q = clamp(round(x / s), -2^(a-1), 2^(a-1) - 1) * s;
  asymmetric: rtn's min/max grid (range widened to include 0, integer zero point);
- fp8: E4M3 with s = absmax / 448 per token or per tensor;
- mxfp4 / nvfp4: the formats' blocks along the input features (granularity: block).
Grids: qbench.quant.formats. No calibration data. The core's probe forward measures each
layer's relative input error and raises QuantizerDidNothing for a quantizer that never ran or
changed nothing.
"""
from __future__ import annotations

import torch

from . import formats
from .rtn import fake_quant, grid_params



def fake_quant_act(x: torch.Tensor, cfg) -> torch.Tensor:
    """`x` on the grid of an ActivationConfig `cfg`, in x's dtype."""
    shape, dtype = x.shape, x.dtype
    dim = -1 if cfg.granularity == "per_token" else None
    if cfg.format != "int":
        return formats.fake_quant_format(x, cfg.format, dim).to(dtype)
    if cfg.symmetric:
        return formats.int_symmetric(x, cfg.bits, dim).to(dtype)
    xf = x.float().reshape(-1, shape[-1]) if dim == -1 else x.float().reshape(1, -1)
    scale, zero = grid_params(xf, cfg.bits, symmetric=False)
    return fake_quant(xf, scale, zero, cfg.bits).reshape(shape).to(dtype)


class ActQuant:
    """The input quantizer of one layer (a function in its InputChain)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.stats: list[float] | None = None   # [sum |x_q - x|^2, sum |x|^2, calls] while measured

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        xq = fake_quant_act(x, self.cfg)
        if self.stats is not None:
            self.stats[0] += float((xq.float() - x.float()).pow(2).sum())
            self.stats[1] += float(x.float().pow(2).sum())
            self.stats[2] += 1
        return xq


def check(model, names: list[str], recipe) -> None:
    """Block formats need in_features divisible by their block (RecipeError before any work)."""
    from .base import RecipeError

    block = formats.BLOCK.get(recipe.activation.format)
    if block is None:
        return
    bad = [n for n in names if model.get_submodule(n).in_features % block]
    if bad:
        raise RecipeError(recipe.source, "activation.format",
                          f"{recipe.activation.format} needs input features divisible by {block}; "
                          f"layer {bad[0]} has {model.get_submodule(bad[0]).in_features}")


def install(model, names: list[str], cfg) -> dict[str, ActQuant]:
    """Appends an ActQuant to each named layer's InputChain; returns them by layer name."""
    from .base import input_chain

    out = {}
    for n in names:
        out[n] = ActQuant(cfg)
        input_chain(model.get_submodule(n)).fns.append(out[n])
    return out
