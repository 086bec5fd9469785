"""Where the norms and linear layers of a Llama-style decoder are, for the transforms
(smoothquant.py, rotation.py): qbench's own model (attn_norm, attn.q_proj.., mlp_norm,
mlp.gate_proj..) and transformers' Llama family (input_layernorm, self_attn.q_proj..,
post_attention_layernorm, mlp.gate_proj..), both with RMSNorm and a SwiGLU MLP.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import RecipeError

NORM_PAIRS = (("attn_norm", "mlp_norm"), ("input_layernorm", "post_attention_layernorm"))
ATTENTION = ("attn", "self_attn")
QKV, O = ("q_proj", "k_proj", "v_proj"), "o_proj"
GATE_UP, DOWN = ("gate_proj", "up_proj"), "down_proj"


@dataclass
class Block:
    attn_norm: nn.Module
    mlp_norm: nn.Module
    qkv: list[str]        # full module names
    o: str
    gate_up: list[str]
    down: str


@dataclass
class Layout:
    blocks: list[Block]
    embedding: nn.Embedding
    final_norm: nn.Module
    lm_head: nn.Linear


def _is_rmsnorm(m) -> bool:
    return (isinstance(m, nn.Module) and type(m).__name__.endswith("RMSNorm")
            and isinstance(getattr(m, "weight", None), nn.Parameter) and getattr(m, "bias", None) is None)


def find_layout(model: nn.Module, source: str) -> Layout:
    """The model's blocks, embedding, final norm and lm_head; RecipeError (field 'transform')
    naming what is missing when the model is not a Llama-style decoder."""
    def fail(problem):
        raise RecipeError(source, "transform", f"the transform needs a Llama-style decoder: {problem}")

    found = None
    for prefix, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and prefix.split(".")[-1] == "layers" and len(mod):
            found = prefix, mod
            break
    if found is None:
        fail("no `layers` list of blocks")
    prefix, layers = found
    blocks = []
    for i, blk in enumerate(layers):
        p = f"{prefix}.{i}"
        norms = next(((a, b) for a, b in NORM_PAIRS if hasattr(blk, a) and hasattr(blk, b)), None)
        attn = next((a for a in ATTENTION if hasattr(blk, a)), None)
        if norms is None or attn is None or not hasattr(blk, "mlp"):
            fail(f"block {p} has no {NORM_PAIRS} norms, attention {ATTENTION} or mlp")
        an, mn = getattr(blk, norms[0]), getattr(blk, norms[1])
        if not (_is_rmsnorm(an) and _is_rmsnorm(mn)):
            fail(f"block {p}: the norms are {type(an).__name__}/{type(mn).__name__}, not RMSNorm")
        names = [f"{p}.{attn}.{n}" for n in (*QKV, O)] + [f"{p}.mlp.{n}" for n in (*GATE_UP, DOWN)]
        for n in names:
            try:
                lin = model.get_submodule(n)
            except AttributeError:
                lin = None
            if not isinstance(lin, nn.Linear):
                fail(f"{n} is not a linear layer")
        blocks.append(Block(an, mn, names[:3], names[3], names[4:6], names[6]))
    parent = model.get_submodule(prefix.rsplit(".", 1)[0]) if "." in prefix else model
    final_norm = getattr(parent, "norm", None)
    if not _is_rmsnorm(final_norm):
        fail("no final RMSNorm `norm` next to the layers")
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(emb, nn.Embedding) or not isinstance(head, nn.Linear):
        fail("no input embedding / output linear (lm_head)")
    return Layout(blocks, emb, final_norm, head)

