"""quantize(): the one entry point every method goes through, and its report.

The core does what all methods share and does not trust any method to prove itself:
it snapshots the selected weights, lets the method quantize, then dequantizes what the model
NOW holds at each selected name and measures ||W_q - W||_F / ||W||_F. A selected layer whose
weights did not change, or a recipe that selects no layer, raises QuantizerDidNothing.
"""
from __future__ import annotations

import fnmatch
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .base import NOOP_TOL, Method, QuantError, QuantizerDidNothing, RecipeError, get_method, model_device
from .recipe import Recipe, load_recipe

CORE_VERSION = "1"   # bump when selection or measurement changes
_LIB_PREFIXES = ("bitsandbytes", "optimum", "hqq")


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
    method: str
    bits: int
    layers_quantized: int
    linear_layers_total: int            # nn.Linear modules in the model before quantization
    skipped: list[str]                  # linear layers the recipe did not select
    bits_per_weight: float              # over the quantized layers, weighted by size
    weight_error: float                 # sqrt(sum ||W_q - W||^2 / sum ||W||^2) over them
    max_layer_error: float
    min_layer_error: float
    seconds: float
    calib_shape: list[int] | None
    library_versions: dict[str, str]
    code_versions: dict[str, str]
    layers: list[LayerReport] = field(default_factory=list)
    extra: dict = field(default_factory=dict)   # method-specific (e.g. activation errors)

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))

    def summary(self) -> str:
        s = (f"{self.recipe} ({self.method}) {self.bits}-bit: {self.layers_quantized}/"
             f"{self.linear_layers_total} linear layers, {self.bits_per_weight:.3f} bits/weight, "
             f"weight error {self.weight_error:.4g} (layers {self.min_layer_error:.3g}.."
             f"{self.max_layer_error:.3g}), {self.seconds:.1f}s")
        a = self.extra.get("activation") or {}
        if a.get("error") is not None:
            s += f", activations {a['bits']}-bit error {a['error']:.4g}"
        elif a.get("dtype"):
            s += f", activations {a['dtype']}"
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
    """Before any work: the recipe selects at least one of the model's linear layers ({name: (out,
    in)}) and its group size divides the input width of every selected one; raises RecipeError."""
    names = [n for n in linear_shapes if selected(n, recipe.layers)]
    if not names:
        shown = list(linear_shapes)[:8]
        raise RecipeError(recipe.source, "layers", f"selects no linear layer of the model (include "
                          f"{recipe.layers['include']}, exclude {recipe.layers['exclude']}); its linear layers: "
                          f"{shown}{' ...' if len(linear_shapes) > 8 else ''}")
    gs = get_method(recipe.method).group_size(recipe, bits) if bits is not None else None
    bad = [(n, linear_shapes[n][1]) for n in names if gs and linear_shapes[n][1] % gs]
    if bad:
        more = f" (and {len(bad) - 1} more layers)" if len(bad) > 1 else ""
        raise RecipeError(recipe.source, "weight.group_size",
                          f"{gs} does not divide in_features={bad[0][1]} of layer {bad[0][0]}{more}")


# --------------------------------------------------------------------------- the entry point
def quantize(model: nn.Module, recipe: Recipe | str | Path, bits: int,
             calib: torch.Tensor | None = None) -> QuantReport:
    """Quantizes `model` IN PLACE with `recipe` at `bits` (the weight width) and returns the
    report. `calib`: LongTensor [samples, seq_len] of token ids from held-out text (see
    qbench.quant.calib.calibration_batch), required when the recipe calibrates.

    Raises RecipeError (bad recipe, or recipe that does not fit the model) and
    MethodUnavailable before touching the model; QuantizerDidNothing if no weight changed.
    """
    recipe = load_recipe(recipe)
    m = get_method(recipe.method)
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in recipe.bits:
        raise RecipeError(recipe.source, "bits", f"{bits!r}-bit requested, but the recipe supports "
                          f"{list(recipe.bits)}")
    device = model_device(model)
    m.check_available(recipe, device)

    all_linear = linear_layers(model)
    names = select_layers(model, recipe.layers)
    if not names:
        raise QuantizerDidNothing(
            f"{recipe.source}: field 'layers': selects no full-precision linear layer "
            f"(include {recipe.layers['include']}, exclude {recipe.layers['exclude']}); "
            f"linear layers: {all_linear[:8]}{' ...' if len(all_linear) > 8 else ''}")
    check_fits(recipe, bits, {n: tuple(model.get_submodule(n).weight.shape) for n in names})
    calib = _check_calib(m, recipe, calib)

    originals = {n: model.get_submodule(n).weight.detach().to("cpu", copy=True) for n in names}
    t0 = time.perf_counter()
    extra = m.apply(model, names, recipe, bits, calib) or {}
    _sync(device)
    seconds = time.perf_counter() - t0

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
    errs = [r.weight_error for r in layer_reports]
    selected = set(names)
    return QuantReport(
        recipe=recipe.name, method=recipe.method, bits=bits,
        layers_quantized=len(names), linear_layers_total=len(all_linear),
        skipped=[n for n in all_linear if n not in selected],
        bits_per_weight=bit_sum / numel, weight_error=math.sqrt(num / den) if den > 0 else math.inf,
        max_layer_error=max(errs), min_layer_error=min(errs), seconds=seconds,
        calib_shape=list(calib.shape) if calib is not None else None,
        library_versions=library_versions(recipe), code_versions=code_versions(recipe),
        layers=layer_reports, extra=extra)


def library_versions(recipe: Recipe | str | Path) -> dict[str, str]:
    """Versions of the libraries the recipe's method uses (for cell keys; torch is not
    included: the cell key records it anyway)."""
    recipe = load_recipe(recipe)
    return get_method(recipe.method).library_versions(recipe)


def code_versions(recipe: Recipe | str | Path) -> dict[str, str]:
    """CODE_VERSION of qbench's own code that the recipe runs: the core and each method."""
    recipe = load_recipe(recipe)
    return {"core": CORE_VERSION, **get_method(recipe.method).code_versions(recipe)}


# --------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_calib(m: Method, recipe: Recipe, calib):
    if not m.needs_calib(recipe):
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
