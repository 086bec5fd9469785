"""quantize(): the one entry point every recipe goes through, and its report.

Stages, in order: transform (smoothquant / rotation) -> weight (the recipe's method) ->
activation (input quantizers) -> kv_cache / attention (the attention modules' attn_quant).
Whatever can fail on the recipe or on the model's shapes fails before the model is touched.

The core does not trust any quantizer to prove itself:
- weights: it snapshots the selected weights (after the transform), lets the method quantize,
  then dequantizes what the model NOW holds at each selected name and measures
  ||W_q - W||_F / ||W||_F;
- run-time quantizers (activations, K, V, attention scores and probabilities): one probe
  forward pass (the first calibration samples, else random tokens) measures each one's relative
  error ||x_q - x|| / ||x|| per layer and records the attention paths that ran (backend_log);
- transforms: the probe's logits before and after, relative difference (full precision is
  meant to be unchanged: ~1e-7 in float32).
A recipe that selects nothing, a weight left unchanged (relative error <= 1e-6), a run-time
quantizer that never ran or changed nothing: QuantizerDidNothing.
"""
from __future__ import annotations

import fnmatch
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import activation, attn, formats, rotation, smoothquant
from .base import (NOOP_TOL, Method, QuantError, QuantizerDidNothing, RecipeError, carry_input_chain, eval_mode,
                   forward, get_method, logits_of, model_device, probe_batch)
from .recipe import Recipe, load_recipe, needs_calib

_LIB_PREFIXES = ("bitsandbytes", "optimum", "hqq")
TRANSFORMS = {"smoothquant": smoothquant, "rotation": rotation}   # transform.type -> module (check, apply)


@dataclass
class LayerReport:
    name: str
    shape: list[int]            # [out_features, in_features]
    module: str                 # class of the module now at this name
    weight_error: float         # ||W_q - W||_F / ||W||_F, W_q dequantized from what is stored
    bits_per_weight: float      # effective storage bits per weight, scales and zeros included


@dataclass
class QuantReport:
    recipe: str
    method: str | None                  # None: no weight quantization
    bits: int | None
    label: str                          # Recipe.label(bits)
    layers_quantized: int               # weight-quantized linear layers
    linear_layers_total: int            # nn.Linear modules in the model before quantization
    skipped: list[str]                  # linear layers left without weight quantization
    bits_per_weight: float | None       # over the quantized layers, weighted by size
    weight_error: float | None          # sqrt(sum ||W_q - W||^2 / sum ||W||^2) over them
    max_layer_error: float | None
    min_layer_error: float | None
    seconds: float
    calib_shape: list[int] | None
    library_versions: dict[str, str]
    code_versions: dict[str, str]
    layers: list[LayerReport] = field(default_factory=list)
    extra: dict = field(default_factory=dict)   # per stage: transform, activation, kv_cache, attention, ...

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))

    def summary(self) -> str:
        s = f"{self.recipe} {self.label}"
        if self.method is not None:
            s += (f" ({self.method}): {self.layers_quantized}/{self.linear_layers_total} linear layers, "
                  f"{self.bits_per_weight:.3f} bits/weight, weight error {self.weight_error:.4g} (layers "
                  f"{self.min_layer_error:.3g}..{self.max_layer_error:.3g})")
        s += f", {self.seconds:.1f}s"
        t = self.extra.get("transform")
        if t:
            s += f", {t['type']} (full-precision logit change {t['logit_change']:.2g})"
        a = self.extra.get("activation") or {}
        if a.get("error") is not None:
            s += f", activations {a['format'] if a['format'] != 'int' else str(a['bits']) + '-bit'} error {a['error']:.4g}"
        elif a.get("dtype"):
            s += f", activations {a['dtype']}"
        kv = self.extra.get("kv_cache") or {}
        if kv.get("k_error") is not None:
            s += f", K error {kv['k_error']:.4g}, V error {kv['v_error']:.4g}"
        at = self.extra.get("attention") or {}
        for what in ("scores", "probs"):
            if at.get(f"{what}_error") is not None:
                s += f", {what} error {at[f'{what}_error']:.4g}"
        return s


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    return x


# --------------------------------------------------------------------------- layer selection
def is_float_linear(m: nn.Module) -> bool:
    """A full-precision nn.Linear (not one a quantization library already replaced)."""
    return (isinstance(m, nn.Linear)
            and not type(m).__module__.startswith(_LIB_PREFIXES)
            and type(m.weight) is nn.Parameter
            and m.weight.dtype.is_floating_point)


def linear_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def selected(name: str, layers: dict) -> bool:
    """Whether a module name matches any `include` pattern and no `exclude` pattern (fnmatch on
    the full module name, case-sensitive)."""
    return (any(fnmatch.fnmatchcase(name, p) for p in layers.get("include", []))
            and not any(fnmatch.fnmatchcase(name, p) for p in layers.get("exclude", [])))


def select_layers(model: nn.Module, layers: dict) -> list[str]:
    """Names of the full-precision nn.Linear modules the recipe's `layers` select."""
    return [n for n, m in model.named_modules() if is_float_linear(m) and selected(n, layers)]


def check_fits(recipe: Recipe, bits: int | None, linear_shapes: dict[str, tuple[int, int]]) -> None:
    """Before any work: a recipe that quantizes linear layers (weights or their inputs) selects at
    least one of the model's ({name: (out, in)}), and its weight method's group size divides the
    input width of every selected one; raises RecipeError."""
    if recipe.method is None and recipe.activation is None:
        return   # kv_cache / attention quantizers act inside attention, not on linear layers
    names = [n for n in linear_shapes if selected(n, recipe.layers)]
    if not names:
        shown = list(linear_shapes)[:8]
        raise RecipeError(recipe.source, "layers", f"selects no linear layer of the model (include "
                          f"{recipe.layers['include']}, exclude {recipe.layers['exclude']}); its linear layers: "
                          f"{shown}{' ...' if len(linear_shapes) > 8 else ''}")
    if recipe.method is None:
        return
    m = get_method(recipe.method)
    gs = m.group_size(recipe, bits)
    bad = [(n, linear_shapes[n][1]) for n in names if gs and gs > 0 and linear_shapes[n][1] % gs]
    if bad:
        more = f" (and {len(bad) - 1} more layers)" if len(bad) > 1 else ""
        raise RecipeError(recipe.source, m.group_size_field,
                          f"{gs} does not divide in_features={bad[0][1]} of layer {bad[0][0]}{more}")


# --------------------------------------------------------------------------- the entry point
def quantize(model: nn.Module, recipe: Recipe | str | Path, bits: int | None,
             calib: torch.Tensor | None = None) -> QuantReport:
    """Quantizes `model` IN PLACE with `recipe` at `bits` (the weight width; None for a recipe
    without a weight method) and returns the report. `calib`: LongTensor [samples, seq_len] of
    token ids from held-out text (qbench.quant.calib.calibration_batch), required exactly when
    the recipe calibrates.

    Raises RecipeError (bad recipe, or a recipe that does not fit the model) and
    MethodUnavailable before touching the model; QuantizerDidNothing if a quantizer did nothing.
    """
    recipe = load_recipe(recipe)
    recipe.check_bits(bits)
    m = get_method(recipe.method) if recipe.method else None
    if m is not None:
        m.check_available(recipe, model_device(model))

    all_linear = linear_layers(model)
    names = []
    if m is not None or recipe.activation is not None:
        names = select_layers(model, recipe.layers)
        if not names:
            raise QuantizerDidNothing(
                f"{recipe.source}: field 'layers': selects no full-precision linear layer "
                f"(include {recipe.layers['include']}, exclude {recipe.layers['exclude']}); "
                f"linear layers: {all_linear[:8]}{' ...' if len(all_linear) > 8 else ''}")
    if m is not None:
        check_fits(recipe, bits, {n: tuple(model.get_submodule(n).weight.shape) for n in names})
    if recipe.activation is not None:
        activation.check(model, names, recipe)
    attn_modules = []
    if recipe.kv_cache is not None or recipe.attention is not None:
        attn_modules = attn.attention_modules(model)
        if not attn_modules:
            raise QuantizerDidNothing(f"{recipe.source}: the model has no attention module calling "
                                      f"qbench.attention.attend (none carries `attn_quant`): nothing reads "
                                      f"the kv_cache / attention quantizers")
        attn.check(attn_modules, recipe)
    if recipe.transform is not None:
        TRANSFORMS[recipe.transform.type].check(model, recipe)
    calib = _check_calib(recipe, calib)
    ids, probe = probe_batch(model, calib)

    extra: dict = {}
    t0 = time.perf_counter()
    if recipe.transform is not None:
        extra["transform"] = _transform(model, recipe, calib, ids, probe)
    seconds = time.perf_counter() - t0
    w = _Weights()
    if m is not None:
        w = _quantize_weights(model, m, names, recipe, bits, calib)
        seconds += w.seconds
        extra.update(w.extra)
    act_quants = activation.install(model, names, recipe.activation) if recipe.activation else {}
    attn_quants = attn.install(attn_modules, recipe) if attn_modules else {}
    extra.update(_measure(model, recipe, ids, probe, act_quants, attn_quants))

    errs = [r.weight_error for r in w.layers]
    selected = set(names) if m is not None else set()
    return QuantReport(
        recipe=recipe.name, method=recipe.method, bits=bits, label=recipe.label(bits),
        layers_quantized=len(w.layers), linear_layers_total=len(all_linear),
        skipped=[n for n in all_linear if n not in selected],
        bits_per_weight=w.bits_per_weight, weight_error=w.error,
        max_layer_error=max(errs) if errs else None, min_layer_error=min(errs) if errs else None,
        seconds=seconds, calib_shape=list(calib.shape) if calib is not None else None,
        library_versions=library_versions(recipe), code_versions=code_versions(recipe),
        layers=w.layers, extra=extra)


# --------------------------------------------------------------------------- the stages
@dataclass
class _Weights:
    layers: list[LayerReport] = field(default_factory=list)
    bits_per_weight: float | None = None
    error: float | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def _quantize_weights(model, m: Method, names, recipe, bits, calib) -> _Weights:
    originals = {n: model.get_submodule(n).weight.detach().to("cpu", copy=True) for n in names}
    before = {n: model.get_submodule(n) for n in names}
    device = model_device(model)
    t0 = time.perf_counter()
    extra = m.apply(model, names, recipe, bits, calib) or {}
    _sync(device)
    seconds = time.perf_counter() - t0
    for n in names:   # run-time input transforms follow a layer the method replaced
        carry_input_chain(before[n], model.get_submodule(n))

    layer_reports, num, den, numel, bit_sum = [], 0.0, 0.0, 0, 0.0
    unchanged = []
    for n in names:
        # on the model's device, one layer at a time (a float64 pass over every weight on the CPU
        # was most of the time of a GPU cell's quantization step)
        mod = model.get_submodule(n)
        wq = m.dequantize(mod).detach()
        w0 = originals[n].to(wq.device, torch.float64)
        wq = wq.double()
        if wq.shape != w0.shape:
            raise QuantError(f"method {m.name!r}: layer {n} dequantizes to shape {list(wq.shape)}, "
                             f"expected {list(w0.shape)}")
        if not torch.isfinite(wq).all():
            raise QuantError(f"method {m.name!r}: layer {n} has non-finite quantized weights")
        d2 = float((wq - w0).pow(2).sum())
        n2 = float(w0.pow(2).sum())
        err = math.sqrt(d2 / n2) if n2 > 0 else (0.0 if d2 == 0 else math.inf)
        if err <= NOOP_TOL:
            unchanged.append(n)
        bpw = float(m.bits_per_weight(mod, recipe, bits))
        layer_reports.append(LayerReport(n, list(w0.shape), type(mod).__name__, err, bpw))
        num += d2
        den += n2
        numel += w0.numel()
        bit_sum += bpw * w0.numel()
    if unchanged:
        raise QuantizerDidNothing(
            f"{recipe.source}: method {m.name!r} at {bits} bits left {len(unchanged)} of {len(names)} "
            f"selected layers unchanged (relative weight error <= {NOOP_TOL}): {unchanged[:5]}")
    extra.update(m.after(model, names, recipe, bits, calib) or {})
    return _Weights(layer_reports, bit_sum / numel, math.sqrt(num / den) if den > 0 else math.inf, seconds, extra)


@torch.no_grad()
def _probe_logits(model, ids) -> torch.Tensor | None:
    if ids is None:
        return None
    with eval_mode(model):
        return logits_of(forward(model, ids.to(model_device(model)))).float()


def _transform(model, recipe, calib, ids, probe) -> dict:
    """Applies the recipe's transform; its report entry with the full-precision logit change
    on the probe batch (the transform is meant to leave the outputs unchanged)."""
    ref = _probe_logits(model, ids)
    info = TRANSFORMS[recipe.transform.type].apply(model, recipe, calib)
    out = _probe_logits(model, ids)
    info["probe"] = probe
    info["logit_change"] = None if ref is None else float((out - ref).norm() / ref.norm())
    return info


def _relative_errors(stats: dict, what: str, recipe) -> tuple[float, dict[str, float]]:
    """(overall, per layer) relative errors from {layer: [sum |d|^2, sum |x|^2, calls]};
    QuantizerDidNothing for a quantizer that never ran or changed nothing."""
    silent = [n for n, s in stats.items() if s[2] == 0]
    if silent:
        raise QuantizerDidNothing(f"{recipe.source}: the {what} quantizer of {len(silent)} layers never ran "
                                  f"in a forward pass: {silent[:5]}")
    errs = {n: math.sqrt(s[0] / s[1]) if s[1] > 0 else 0.0 for n, s in stats.items()}
    unchanged = [n for n, e in errs.items() if e <= NOOP_TOL]
    if unchanged:
        raise QuantizerDidNothing(f"{recipe.source}: {what} quantization changed nothing in "
                                  f"{len(unchanged)} layers: {unchanged[:5]}")
    overall = math.sqrt(sum(s[0] for s in stats.values()) / sum(s[1] for s in stats.values()))
    return overall, errs


@torch.no_grad()
def _measure(model, recipe, ids, probe, act_quants, attn_quants) -> dict:
    """One probe forward with every run-time quantizer tracking its error (see the module doc)."""
    if not act_quants and not attn_quants:
        return {}
    from qbench.attention import backend_log

    out = {}
    ran: set = set()
    if ids is not None:
        for q in act_quants.values():
            q.stats = [0.0, 0.0, 0]
        for q in attn_quants.values():
            q.stats = {t: [0.0, 0.0, 0] for t in q.quantized()}
        try:
            with eval_mode(model), backend_log() as ran:
                forward(model, ids.to(model_device(model)))
        finally:
            act_stats = {n: q.stats for n, q in act_quants.items()}
            attn_stats = {n: q.stats for n, q in attn_quants.items()}
            for q in (*act_quants.values(), *attn_quants.values()):
                q.stats = None
    if act_quants:
        info = {**recipe.activation.to_dict(), "probe": probe, "error": None, "layers": {}}
        if ids is not None:
            info["error"], info["layers"] = _relative_errors(act_stats, "activation", recipe)
        out["activation"] = info
    for section, tensors in (("kv_cache", ("k", "v")), ("attention", ("scores", "probs"))):
        cfg = getattr(recipe, section)
        if cfg is None or not attn_quants:
            continue
        info = {**cfg.to_dict(), "probe": probe, "layers": {}}
        for t in tensors:
            if not any(t in q.quantized() for q in attn_quants.values()):
                continue
            info[f"{t}_error"] = None
            if ids is not None:
                overall, errs = _relative_errors({n: s[t] for n, s in attn_stats.items()},
                                                 {"k": "K", "v": "V"}.get(t, t), recipe)
                info[f"{t}_error"] = overall
                for n, e in errs.items():
                    info["layers"].setdefault(n, {})[t] = e
        info["backends"] = sorted(ran)
        out[section] = info
    return out


def library_versions(recipe: Recipe | str | Path) -> dict[str, str]:
    """Versions of the libraries the recipe uses (for cell keys; torch is not included: the
    cell key records it anyway)."""
    recipe = load_recipe(recipe)
    out = get_method(recipe.method).library_versions(recipe) if recipe.method else {}
    if recipe.transform is not None and recipe.transform.type == "rotation":   # its Hadamard matrices
        out["torchao"] = formats.torchao_version()
    return out


def code_versions(recipe: Recipe | str | Path) -> dict[str, str]:
    """Versions of the quantization code areas the recipe runs through (qbench/identity.py)."""
    from ..identity import AREAS, areas_of_recipe

    return {name: AREAS[name].version for name in areas_of_recipe(load_recipe(recipe).to_dict())}


# --------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_calib(recipe: Recipe, calib):
    if not needs_calib(recipe):
        return None
    if calib is None:
        raise RecipeError(recipe.source, "calib",
                          "this recipe calibrates: pass calib=recipe_calibration(recipe, tokenizer, "
                          "heldout_text) (qbench.quant.calib)")
    if not isinstance(calib, torch.Tensor) or calib.dim() != 2 or calib.dtype != torch.long:
        raise RecipeError(recipe.source, "calib", "the calibration batch must be a LongTensor "
                          f"[samples, seq_len], got {type(calib).__name__} "
                          f"{getattr(calib, 'dtype', '')} {list(getattr(calib, 'shape', []))}")
    want = [recipe.calib["samples"], recipe.calib["seq_len"]]
    if list(calib.shape) != want:
        raise RecipeError(recipe.source, "calib", f"the calibration batch has shape {list(calib.shape)}, "
                          f"the recipe asks for [samples, seq_len] = {want}")
    return calib
