"""Hadamard rotation (QuaRot, Ashkboos et al., 2024; SpinQuant's R1 and R4): the recipe's
`transform: {type: rotation, seed: 0, down_proj: true}`. Fused into the weights, so
full-precision outputs are unchanged (up to float rounding; tested to 1e-4 on qbench's model
and on transformers' LlamaForCausalLM); quantizers then see rotated weights and activations,
whose outliers are spread over all channels.

1. Each RMSNorm's weight is folded into the linears reading its output (W <- W diag(g), g <- 1):
   attn_norm into q/k/v_proj, mlp_norm into gate/up_proj, the final norm into lm_head (which is
   untied from the embedding first; config.tie_word_embeddings becomes false).
2. Residual stream: Q = a random Hadamard matrix of the hidden size (torchao's
   random_hadamard_matrix(n, seed): a Hadamard matrix times a random +-1 diagonal, / sqrt(n);
   n = 2^k, or 12, 20, 28, 36, 40, 44, 52, 60, 108, 140, 156 or 172 times 2^k). The embedding
   E <- E Q; the linears reading the residual stream (q/k/v, gate/up, lm_head) W <- W Q; the
   ones writing it (o_proj, down_proj) W <- Q^T W, bias b <- b Q. RMSNorm(h Q) = RMSNorm(h) Q,
   since Q is orthogonal and the norms' weights are 1 now.
3. down_proj's input (`down_proj: true`): an online Hadamard H of the MLP width (seed + 1): the
   input x becomes x H at run time (base.InputChain, before any activation quantizer) and
   W_down <- W_down H.
float64 arithmetic, cast back to the weights' dtype; the matrices are built on the CPU (the
same on every device). torchao's own apply_spinquant works only on torchao's Transformer
(module names wq/wk/wv/w1/w2/w3, its RMSNorm class), so only its Hadamard matrices are used.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import RecipeError, input_chain
from .formats import torchao_module
from .layout import find_layout

_HADAMARD = "torchao.prototype.spinquant.hadamard_utils"


def hadamard(n: int, seed: int) -> torch.Tensor:
    """A random n x n Hadamard matrix (orthogonal), float64 on the CPU."""
    return torchao_module(_HADAMARD).random_hadamard_matrix(n, "cpu", seed=seed).double()


class OnlineHadamard:
    """x -> x H on a layer's input (float32, cast back)."""

    def __init__(self, h: torch.Tensor):
        self.h = h.float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.h.device != x.device:
            self.h = self.h.to(x.device)
        return (x.float() @ self.h).to(x.dtype)


def _sizes(model, layout) -> tuple[int, int]:
    return layout.embedding.weight.shape[1], model.get_submodule(layout.blocks[0].down).in_features


def check(model, recipe) -> None:
    layout = find_layout(model, recipe.source)
    utils = torchao_module(_HADAMARD)
    for what, n in zip(("hidden size", "MLP width"), _sizes(model, layout)):
        try:
            utils.get_hadK(n)
        except AssertionError:
            raise RecipeError(recipe.source, "transform", f"no Hadamard matrix for the {what} {n} (needs "
                              f"2^k, or 12/20/28/36/40/44/52/60/108/140/156/172 x 2^k)") from None


def _set(param: nn.Parameter, value: torch.Tensor) -> None:
    param.data = value.to(param.dtype)


@torch.no_grad()
def apply(model, recipe, calib=None) -> dict:
    t = recipe.transform
    layout = find_layout(model, recipe.source)
    emb, head = layout.embedding, layout.lm_head
    untied = head.weight is emb.weight
    if untied:
        head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
        if hasattr(getattr(model, "config", None), "tie_word_embeddings"):
            model.config.tie_word_embeddings = False

    def lin(name):
        return model.get_submodule(name)

    def fold(norm, linears):
        g = norm.weight.double()
        for m in linears:
            _set(m.weight, m.weight.double() * g)
        norm.weight.data.fill_(1)

    for b in layout.blocks:
        fold(b.attn_norm, [lin(n) for n in b.qkv])
        fold(b.mlp_norm, [lin(n) for n in b.gate_up])
    fold(layout.final_norm, [head])

    hidden, mlp = _sizes(model, layout)
    dev = emb.weight.device
    q = hadamard(hidden, t.seed).to(dev)
    h = hadamard(mlp, t.seed + 1).to(dev) if t.down_proj else None
    _set(emb.weight, emb.weight.double() @ q)
    _set(head.weight, head.weight.double() @ q)
    for b in layout.blocks:
        for n in (*b.qkv, *b.gate_up):
            _set(lin(n).weight, lin(n).weight.double() @ q)
        for n in (b.o, b.down):
            m = lin(n)
            w = q.T @ m.weight.double()
            if n == b.down and h is not None:
                w = w @ h
            _set(m.weight, w)
            if m.bias is not None:
                _set(m.bias, m.bias.double() @ q)
        if h is not None:
            input_chain(lin(b.down)).fns.append(OnlineHadamard(h))
    return {"type": "rotation", "seed": t.seed, "hidden_size": hidden, "down_proj": t.down_proj,
            "mlp_size": mlp if t.down_proj else None, "untied_lm_head": untied}
