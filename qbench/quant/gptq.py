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

Speed without changing a bit (`python -m qbench.bench.gptq_compare` checks against an older tree): the
layers of a stage share one Hessian (summed once) and one damped Cholesky factor, and one column
loop runs over their stacked rows (GPTQ treats rows independently; each layer's products keep
their own shapes); a stage's calibration forwards stop as soon as its layers have their inputs
(the q/k/v stage never runs attention).

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
    (Q,), (info,) = gptq_quantize_group([W], H, bits, group_size, symmetric, damp, act_order, static_groups,
                                        block_size)
    return Q, info


def _inverse_hessian_factor(H: torch.Tensor, damp: float, act_order: bool):
    """(upper Cholesky factor of the damped H^-1, column order or None, dead columns, damping
    used, retries). Dead inputs (H_ii = 0) get H_ii = 1; more damping if H is not positive definite."""
    H = H.detach().float().clone()
    cols = H.shape[0]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        H = H[perm][:, perm]
    base = damp * torch.mean(torch.diag(H))
    diag = torch.arange(cols, device=H.device)
    for tries in range(6):
        factor = 10 ** tries
        Hd = H.clone()
        Hd[diag, diag] += base * factor
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            Hinv, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                return Hinv, perm, dead, damp * factor, tries
    raise QuantError("gptq: the damped Hessian is not positive definite even with 1e5 x damping")


@torch.no_grad()
def gptq_quantize_group(Ws: list[torch.Tensor], H: torch.Tensor, bits: int, group_size: int | None = None,
                        symmetric: bool = False, damp: float = 0.01, act_order: bool = False,
                        static_groups: bool = False, block_size: int = 128) -> tuple[list, list]:
    """GPTQ of weights [out_i, in] that read the same input, so share one Hessian (q/k/v,
    gate/up): the damped inverse is factored once and one column loop runs over their stacked
    rows. Exact: GPTQ treats rows independently (a row's rounding error feeds only its own later
    columns; scales and zeros are per row), so each layer gets what it would get alone.
    Returns ([fake-quantized weight (float32) per layer], [info per layer])."""
    rows_of = [w.shape[0] for w in Ws]
    ends = torch.tensor(rows_of).cumsum(0).tolist()
    spans = list(zip([0] + ends[:-1], ends))
    W = torch.cat([w.detach().float() for w in Ws]) if len(Ws) > 1 else Ws[0].detach().float().clone()
    rows, cols = W.shape
    gs = group_size or None
    if gs is not None and cols % gs:
        raise ValueError(f"group size {gs} does not divide in_features {cols}")

    Hinv, perm, dead, used, tries = _inverse_hessian_factor(H, damp, act_order)
    W[:, dead] = 0
    groups = None
    if gs is not None and static_groups:
        groups = [grid_params(W[:, i:i + gs], bits, symmetric) for i in range(0, cols, gs)]
    elif gs is None:
        scale, zero = grid_params(W, bits, symmetric)
    if perm is not None:
        W = W[:, perm]

    maxq = 2 ** bits - 1
    if gs is None:
        s_col, z_col = scale.flatten(), zero.flatten()
    if groups is not None:
        groups = [(s.flatten(), z.flatten()) for s, z in groups]
        orig_col = perm.tolist() if perm is not None else list(range(cols))
    Q = torch.zeros_like(W)
    row_loss = torch.zeros(rows, dtype=torch.float64, device=W.device)
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
        row_loss += Err1.pow(2).sum(dim=1).double() / 2
        for r0, r1 in spans:   # one product per layer: the shapes (so the GPU's kernels) of a layer alone
            W[r0:r1, i2:] -= Err1[r0:r1] @ Hinv[i1:i2, i2:]

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    infos = [{"damp": used, "damp_retries": tries, "loss": float(part.sum())} for part in row_loss.split(rows_of)]
    return list(Q.split(rows_of)), infos


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
def _collect(run, model: nn.Module, groups: list[list[str]], stop_early: bool) -> list[Hessian]:
    """One Hessian per group of linears that read the same input (q/k/v, gate/up), over the
    forwards that `run(start)` makes (calling `start()` before each). A group's Hessian is summed
    once, from its first member's input; the other members must be handed that very tensor.
    stop_early: a forward ends (_Stop) once every linear of `groups` has seen its input, since
    nothing after them can change the Hessians (not for linears called more than once)."""
    hs = [Hessian(model.get_submodule(g[0]).in_features, model.get_submodule(g[0]).weight.device) for g in groups]
    calls = {n: 0 for g in groups for n in g}
    pending: set[str] = set()
    last: list[torch.Tensor | None] = [None] * len(groups)

    def hook(gi: int, name: str):
        def fn(mod, inp, out):
            x = inp[0]
            if name == groups[gi][0]:
                hs[gi].add(x)
                last[gi] = x
            elif x is not last[gi]:
                raise QuantError(f"gptq: {name} was grouped with {groups[gi][0]} (one input) but reads another")
            calls[name] += 1
            pending.discard(name)
            if stop_early and not pending:
                raise _Stop
        return fn

    def start():
        pending.clear()
        pending.update(calls)

    handles = [model.get_submodule(n).register_forward_hook(hook(gi, n)) for gi, g in enumerate(groups) for n in g]
    try:
        run(start)
    finally:
        for h in handles:
            h.remove()
    for g in groups:
        for n in g:
            if calls[n] == 0:
                raise QuantError(f"gptq: layer {n} saw no calibration input")
            if calls[n] != calls[g[0]]:
                raise QuantError(f"gptq: {n} ran {calls[n]} times, {g[0]} (same input) {calls[g[0]]} times")
    return hs


def _run_batches(call, batches):
    """run(start) for _collect: call(batch) for each batch, a _Stop ending only that forward."""
    def run(start):
        for b in batches:
            start()
            try:
                call(b)
            except _Stop:
                pass
    return run


@torch.no_grad()
def _stages(run_one, model: nn.Module, names: list[str]) -> tuple[list[list[str]], bool]:
    """Groups the named linears by shared input (the same tensor object), in execution order,
    and whether any of them ran more than once in the forward. `run_one` runs one batch; the
    inputs are held until grouped, so no object id is reused."""
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
    out.extend([[n] for n in names if n not in seen])  # never called: caught when collecting
    return out, len(order) > len(seen)


def _quantize_groups(model, groups, hs, recipe, bits, info):
    """GPTQ of each group of linears with its shared Hessian; weights replaced in place."""
    w = recipe.weight
    for g, h in zip(groups, hs):
        lins = [model.get_submodule(n) for n in g]
        qs, infos = gptq_quantize_group([lin.weight.data for lin in lins], h.H, bits, w["group_size"],
                                        w["symmetric"], w["damp"], w["act_order"], w["static_groups"],
                                        w["block_size"])
        for n, lin, q, i in zip(g, lins, qs, infos):
            lin.weight.data.copy_(q.to(lin.weight.dtype))
            info[n] = i


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
                    if mine:
                        groups, repeats = _stages(lambda block=block: block(*cache[0][0], **cache[0][1]),
                                                  model, mine)
                        run = _run_batches(lambda c, block=block: block(*c[0], **c[1]), cache)
                        # true_sequential: each group (stage) sees the outputs of the quantized ones before it
                        for stage in ([[g] for g in groups] if recipe.weight["true_sequential"] else [groups]):
                            hs = _collect(run, model, stage, stop_early=not repeats)
                            _quantize_groups(model, stage, hs, recipe, bits, info)
                        done.update(mine)
                    if bi + 1 < len(blocks):
                        cache = [_with_hidden(a, k, _first(block(*a, **k))) for a, k in cache]
                del cache
            rest = [[n] for n in names if n not in done]
            if rest:
                hs = _collect(_run_batches(lambda b: forward(model, b), batches), model, rest, stop_early=False)
                _quantize_groups(model, rest, hs, recipe, bits, info)
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
