"""gptq: GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"), written here.

Per linear layer with input activations X (from the calibration batch):
  H = 2/n X^T X (accumulated over calibration tokens); dead inputs (H_ii = 0) are zeroed;
  H += damp * mean(diag(H)) * I; U = Cholesky(H^-1) (upper);
  columns are quantized one by one (optionally in order of decreasing H_ii, "act_order"),
  each column's error, scaled by 1/U_ii, is fed back into the not yet quantized columns
  through the row U_i,: (lazy batch updates in blocks of `block_size` columns);
  with a group size, a group's scale/zero are fixed right before its first column is
  quantized, from the current (already error-compensated) weights ("static_groups": from the
  original weights, before any update, in original column order).
Across the model: blocks (the nn.ModuleList holding the selected layers, e.g. model.layers) are
processed in order; each block sees the outputs of the already quantized blocks before it
("sequential"); inside a block, layers that read the same input (q/k/v, gate/up) form a
stage and stages are quantized in execution order, each seeing the outputs of the quantized
stages before it ("true_sequential"). Selected layers outside the blocks (or every layer when
the model has no block list) get their Hessians from full-model forwards afterwards.

The grid is rtn's (same scales and zeros); weights stay nn.Linear with fake-quantized values.
Effective bits: as rtn, plus a 32-bit group index per input column when act_order regroups
columns (act_order with a group size and without static_groups).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import Field, Method, QuantError, calibration_batches, eval_mode, forward, register
from .rtn import WEIGHT_FIELDS as RTN_FIELDS, fake_quant_bits, grid_params

CODE_VERSION = "1"


# --------------------------------------------------------------------------- the algorithm
class Hessian:
    """Running H = 2/n sum x x^T over the rows of the inputs seen so far (float32)."""

    def __init__(self, columns: int, device):
        self.H = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.n = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        t = x.shape[0]
        self.H *= self.n / (self.n + t)
        self.n += t
        x = math.sqrt(2 / self.n) * x
        self.H += x.T @ x


@torch.no_grad()
def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int | None = None,
                  symmetric: bool = False, damp: float = 0.01, act_order: bool = False,
                  static_groups: bool = False, block_size: int = 128) -> tuple[torch.Tensor, dict]:
    """GPTQ of one [out, in] weight given its input Hessian [in, in]. Returns the
    fake-quantized weight (float32, same shape) and info (damping used, proxy loss)."""
    W = W.detach().float().clone()
    H = H.detach().float().clone()
    rows, cols = W.shape
    gs = group_size or None
    if gs is not None and cols % gs:
        raise ValueError(f"group size {gs} does not divide in_features {cols}")

    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    groups = None
    if gs is not None and static_groups:
        groups = [grid_params(W[:, i:i + gs], bits, symmetric) for i in range(0, cols, gs)]
    elif gs is None:
        scale, zero = grid_params(W, bits, symmetric)

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]

    # damping and the upper Cholesky factor of H^-1 (more damping if H is not positive definite)
    base = damp * torch.mean(torch.diag(H))
    diag = torch.arange(cols, device=H.device)
    Hinv, used, tries = None, damp, 0
    for tries in range(6):
        factor = 10 ** tries
        Hd = H.clone()
        Hd[diag, diag] += base * factor
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            Hinv, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                used = damp * factor
                break
        Hinv = None
    if Hinv is None:
        raise QuantError("gptq: the damped Hessian is not positive definite even with 1e5 x damping")

    maxq = 2 ** bits - 1
    if gs is None:
        s_col, z_col = scale.flatten(), zero.flatten()
    if groups is not None:
        groups = [(s.flatten(), z.flatten()) for s, z in groups]
        orig_col = perm.tolist() if perm is not None else list(range(cols))
    Q = torch.zeros_like(W)
    loss = 0.0
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            c = i1 + i
            if gs is not None:
                if groups is not None:
                    s_col, z_col = groups[orig_col[c] // gs]
                elif c % gs == 0:
                    # the group's current values: rest of this block, then columns beyond it
                    cur = W1[:, i:i + gs]
                    if cur.shape[1] < gs:
                        cur = torch.cat([cur, W[:, i2:c + gs]], dim=1)
                    s_col, z_col = (t.flatten() for t in grid_params(cur, bits, symmetric))
            w = W1[:, i]
            q = torch.clamp(torch.round(w / s_col) + z_col, 0, maxq).sub_(z_col).mul_(s_col)
            Q1[:, i] = q
            err1 = (w - q) / Hinv1[i, i]
            W1[:, i:].addr_(err1, Hinv1[i, i:], alpha=-1)
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        loss += float(Err1.pow(2).sum()) / 2
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q, {"damp": used, "damp_retries": tries, "loss": loss}


# --------------------------------------------------------------------------- the model walk
class _Stop(Exception):
    pass


def _find_blocks(model: nn.Module, names: list[str]) -> tuple[str, nn.ModuleList] | None:
    """The nn.ModuleList whose items hold the most selected layers (e.g. model.layers)."""
    best, best_n = None, 0
    for prefix, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        p = prefix + "."
        n = sum(1 for x in names if x.startswith(p))
        if n > best_n:
            best, best_n = (prefix, mod), n
    return best


def _hidden_of(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, h):
    if args:
        return (h,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = h
    return args, kwargs


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def _collect(run, model: nn.Module, names: list[str]) -> dict[str, Hessian]:
    """Hessians of the named linears over whatever `run()` executes."""
    hs, handles = {}, []
    for n in names:
        lin = model.get_submodule(n)
        hs[n] = Hessian(lin.in_features, lin.weight.device)
        handles.append(lin.register_forward_hook(lambda m, inp, out, h=hs[n]: h.add(inp[0])))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return hs


@torch.no_grad()
def _stages(run_one, model: nn.Module, names: list[str]) -> list[list[str]]:
    """Groups the named linears by shared input (the same tensor object), in execution order.
    `run_one` runs one batch; the inputs are held until grouped, so no object id is reused."""
    order, handles = [], []
    for n in names:
        lin = model.get_submodule(n)
        handles.append(lin.register_forward_hook(lambda m, inp, out, n=n: order.append((n, inp[0]))))
    try:
        run_one()
    finally:
        for h in handles:
            h.remove()
    stages: list[tuple[torch.Tensor, list[str]]] = []
    seen = set()
    for n, x in order:
        if n in seen:
            continue
        seen.add(n)
        for x0, members in stages:
            if x0 is x:
                members.append(n)
                break
        else:
            stages.append((x, [n]))
    out = [members for _, members in stages]
    out.extend([[n] for n in names if n not in seen])  # never called: caught when quantizing
    return out


def _quantize_layers(model, names, hs, recipe, bits, info):
    w = recipe.weight
    for n in names:
        lin = model.get_submodule(n)
        if hs[n].n == 0:
            raise QuantError(f"gptq: layer {n} saw no calibration input")
        q, i = gptq_quantize(lin.weight.data, hs[n].H, bits, w["group_size"], w["symmetric"],
                             w["damp"], w["act_order"], w["static_groups"], w["block_size"])
        lin.weight.data.copy_(q.to(lin.weight.dtype))
        info[n] = i
        hs[n] = None


WEIGHT_FIELDS = {
    **RTN_FIELDS,
    "damp": Field(float, default=0.01, min=0.0, max=1.0, doc="damping, a fraction of mean(diag(H))"),
    "act_order": Field(bool, default=False, doc="quantize columns in order of decreasing H_ii"),
    "static_groups": Field(bool, default=False, doc="group scales from the original weights"),
    "block_size": Field(int, default=128, min=1, doc="columns per lazy batch update"),
    "true_sequential": Field(bool, default=True, doc="stages inside a block see quantized inputs"),
}


@register
class GPTQ(Method):
    name = "gptq"
    bits = (2, 3, 4, 5, 6, 7, 8)
    code_version = CODE_VERSION
    weight_fields = WEIGHT_FIELDS
    uses_calib = True

    @torch.no_grad()
    def apply(self, model, names, recipe, bits, calib):
        batches = calibration_batches(model, calib)
        info: dict[str, dict] = {}
        found = _find_blocks(model, names)
        done: set[str] = set()
        with eval_mode(model):
            if found is not None:
                prefix, blocks = found
                cache = []

                def grab(mod, args, kwargs):
                    cache.append((args, kwargs))
                    raise _Stop

                h = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
                try:
                    for b in batches:
                        try:
                            forward(model, b)
                        except _Stop:
                            pass
                finally:
                    h.remove()
                if len(cache) != len(batches):
                    raise QuantError(f"gptq: could not capture the inputs of {prefix}.0")
                for bi, block in enumerate(blocks):
                    p = f"{prefix}.{bi}."
                    mine = [n for n in names if n.startswith(p)]

                    def run(block=block):
                        for args, kwargs in cache:
                            block(*args, **kwargs)

                    def run_one(block=block):
                        block(*cache[0][0], **cache[0][1])

                    if mine:
                        stages = _stages(run_one, model, mine) if recipe.weight["true_sequential"] else [mine]
                        for st in stages:
                            hs = _collect(run, model, st)
                            _quantize_layers(model, st, hs, recipe, bits, info)
                        done.update(mine)
                    if bi + 1 < len(blocks):
                        cache = [_with_hidden(a, k, _first(block(*a, **k))) for a, k in cache]
                del cache
            rest = [n for n in names if n not in done]
            if rest:
                def run_model():
                    for b in batches:
                        forward(model, b)
                hs = _collect(run_model, model, rest)
                _quantize_layers(model, rest, hs, recipe, bits, info)
        retries = {n: i["damp_retries"] for n, i in info.items() if i["damp_retries"]}
        return {"gptq": {"sequential_blocks": found[0] if found else None,
                         "damp_increased": retries}}

    def dequantize(self, module):
        return module.weight

    def bits_per_weight(self, module, recipe, bits):
        w = recipe.weight
        b = fake_quant_bits(bits, w["group_size"], w["symmetric"], module.in_features, module.weight.dtype)
        if w["act_order"] and w["group_size"] and not w["static_groups"]:
            b += 32 / module.out_features   # g_idx: one int32 group index per input column
        return b
