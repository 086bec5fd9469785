"""SmoothQuant (Xiao et al., 2023): the recipe's `transform: {type: smoothquant, alpha: 0.5}`.
Migrates the activations' per-channel range into the weights before weight / activation
quantization; full-precision outputs are unchanged (up to float rounding; tested to 1e-4).

Smoothing groups (a producer and the linear layers reading its output; llm-compressor's
default Llama mappings): attn_norm -> q/k/v_proj, mlp_norm -> gate/up_proj, up_proj -> down_proj.
With a_j = max |X_j| over the calibration batch's tokens (X the group's input) and
w_j = max |W_ij| over the rows of all the group's linears:
    s_j = (a_j + eps)^alpha / (w_j + eps)^(1 - alpha),   eps = float32 machine epsilon
(torchao SmoothQuantObserver's formula; for a group of one linear bit-identical to it, tested);
then W[:, j] *= s_j in each linear of the group and the producer divides by s_j: the RMSNorm's
weight g_j /= s_j (so the norm's output channel j shrinks), or row j of up_proj (down_proj's
input is silu(gate) * up, linear in up's output). float64 arithmetic, cast back to the weights'
dtype. Uses the calibration batch (the recipe's `calib:` section).

Why not torchao's SmoothQuantConfig: it replaces each linear by torchao's observed / quantized
linear, applies the smoothing factor to the activation at run time inside torchao's own int8
tensor subclasses, and keeps one factor per linear; it cannot sit in front of another weight
method (rtn, gptq, hqq, ...) or qbench's activation quantizer, and per-linear factors for
q/k/v cannot be folded into the norm they share. Its formula is used and tested here.
"""
from __future__ import annotations

import torch

from .base import QuantizerDidNothing, calibration_batches, eval_mode, forward
from .layout import find_layout



def smoothing_factor(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    eps = torch.finfo(torch.float32).eps
    return torch.pow(act_absmax + eps, alpha) / torch.pow(weight_absmax + eps, 1 - alpha)


def groups(model, layout):
    """[(producer, 'norm' | 'rows', [linear names])] in model order."""
    out = []
    for b in layout.blocks:
        out += [(b.attn_norm, "norm", b.qkv), (b.mlp_norm, "norm", b.gate_up),
                (model.get_submodule(b.gate_up[1]), "rows", [b.down])]
    return out


@torch.no_grad()
def input_absmax(model, names: list[str], calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel max |input| of the named linears over the calibration batch (float32)."""
    amax, handles = {}, []

    def hook(name):
        def f(module, inp, out):
            a = inp[0].detach().abs().reshape(-1, inp[0].shape[-1]).amax(dim=0).float()
            amax[name] = a if name not in amax else torch.maximum(amax[name], a)
        return f

    for n in names:
        handles.append(model.get_submodule(n).register_forward_hook(hook(n)))
    try:
        with eval_mode(model):
            for b in calibration_batches(model, calib):
                forward(model, b)
    finally:
        for h in handles:
            h.remove()
    return amax


def check(model, recipe) -> None:
    find_layout(model, recipe.source)


@torch.no_grad()
def apply(model, recipe, calib) -> dict:
    alpha = recipe.transform.alpha
    gs = groups(model, find_layout(model, recipe.source))
    amax = input_absmax(model, [names[0] for _, _, names in gs], calib)
    spread, smin, smax = {}, float("inf"), 0.0
    for producer, kind, names in gs:
        lins = [model.get_submodule(n) for n in names]
        a = amax[names[0]]
        w = torch.cat([lin.weight.detach().abs().float() for lin in lins]).amax(dim=0)
        s = smoothing_factor(a, w, alpha).double()
        for lin in lins:
            lin.weight.data = (lin.weight.double() * s).to(lin.weight.dtype)
        pw = producer.weight
        pw.data = (pw.double() / (s if kind == "norm" else s[:, None])).to(pw.dtype)
        after = a.double() / s
        # how far the largest input channel stands out, before and after smoothing
        spread[names[0]] = [float(a.max() / a.median().clamp_min(1e-30)),
                            float(after.max() / after.median().clamp_min(1e-30))]
        smin, smax = min(smin, float(s.min())), max(smax, float(s.max()))
    if smax - 1 <= 1e-6 and 1 - smin <= 1e-6:
        raise QuantizerDidNothing(f"{recipe.source}: smoothquant: every smoothing factor is 1")
    return {"type": "smoothquant", "alpha": alpha, "groups": len(gs), "scale_min": smin, "scale_max": smax,
            "input_max_over_median": spread}
