"""The one interface every quantization method implements, its registry, and the errors.

A method is a subclass of `Method` in its own module of this package (`qbench/quant/<name>.py`)
that registers itself with `@register`. The registry imports every module of the package on
first use, so adding a method is: one new module + one recipe YAML; nothing else to edit.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import QBenchError


# --------------------------------------------------------------------------- errors
class QuantError(QBenchError):
    """Base class of qbench.quant errors."""


class RecipeError(QuantError, ValueError):
    """A recipe is invalid (or does not fit the model). Names the file and the field."""

    def __init__(self, source: str, field: str | None, problem: str):
        self.source, self.field, self.problem = source, field, problem
        where = f"{source}: field '{field}'" if field else f"{source}"
        super().__init__(f"{where}: {problem}")


class QuantizerDidNothing(QuantError):
    """A quantization left the model unchanged (no layer selected, or a selected layer's
    weights are identical to full precision). Never a result."""


class MethodUnavailable(QuantError):
    """The method cannot run here (library missing, or no path on this device)."""


# --------------------------------------------------------------------------- recipe fields
REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """One recipe field: its type, default (REQUIRED: must be written), allowed values."""

    type: type | tuple[type, ...]
    default: Any = REQUIRED
    choices: tuple | None = None
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check(self, value: Any, source: str, field: str) -> Any:
        """Returns the value (ints widened to float where a float is asked) or raises."""
        if value is None:
            if self.nullable:
                return None
            raise RecipeError(source, field, "must not be null")
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        ok = any(_is_instance(value, t) for t in types)
        if not ok:
            names = " or ".join(t.__name__ for t in types)
            raise RecipeError(source, field, f"expected {names}, got {type(value).__name__} {value!r}")
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.choices is not None and value not in self.choices:
            raise RecipeError(source, field, f"{value!r} is not one of {list(self.choices)}")
        if self.min is not None and value < self.min:
            raise RecipeError(source, field, f"{value!r} is below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise RecipeError(source, field, f"{value!r} is above the maximum {self.max}")
        return value


def _is_instance(value: Any, t: type) -> bool:
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is list:
        return isinstance(value, list)
    return isinstance(value, t)


# --------------------------------------------------------------------------- methods
class Method:
    """A quantization method. Subclass, set the class attributes, implement `apply` and
    `dequantize`, decorate with `@register`.

    The core (`qbench.quant.core.quantize`) does everything common: validation, layer
    selection, group-size checks, snapshots of the original weights, the reconstruction
    error measured from the weights the model now holds, the report, and the checks that
    the quantizer acted. A method only turns selected nn.Linear layers into quantized ones.
    """

    name: ClassVar[str]                       # the recipe's `method`
    bits: ClassVar[tuple[int, ...]]           # widths the method supports
    libraries: ClassVar[tuple[str, ...]] = () # distributions whose versions go into cell keys
    imports: ClassVar[tuple[str, ...]] = ()   # modules that must import for the method to run
    weight_fields: ClassVar[dict[str, Field]] = {}
    uses_calib: ClassVar[bool] = False
    group_size_field: ClassVar[str] = "weight.group_size"   # the field a group-size error names

    # ---- recipe hooks
    def weight_schema(self, raw_weight: dict, source: str) -> dict[str, Field]:
        """The fields allowed in the recipe's `weight:` section."""
        return self.weight_fields

    def supported_bits(self, weight: dict) -> tuple[int, ...]:
        """Widths a recipe with this `weight:` section may list."""
        return self.bits

    def needs_calib(self, recipe) -> bool:
        """Whether quantization with this recipe needs a calibration batch."""
        return self.uses_calib

    def validate(self, recipe) -> None:
        """Cross-field checks on a parsed recipe (raise RecipeError naming the field)."""

    def group_size(self, recipe, bits: int) -> int | None:
        """Group size along in_features the method will use (checked against the model)."""
        return recipe.weight.get("group_size")

    def weight_token(self, recipe, bits: int) -> str:
        """The weight part of the table label: the width ("4"), or a format name ("MXFP4")."""
        return str(bits)

    def activation_token(self, recipe) -> str | None:
        """The activation part of the label when the method quantizes activations itself
        (quanto's static int8/float8), else None."""
        return None

    def library_versions(self, recipe) -> dict[str, str]:
        return {lib: _dist_version(lib) for lib in self.libraries}

    # ---- run hooks
    def check_available(self, recipe, device: torch.device) -> None:
        """Raise MethodUnavailable (with the reason) if the method cannot run on `device`."""
        for lib in self.libraries:
            try:
                _dist_version(lib)
            except Exception as e:  # pragma: no cover - depends on the environment
                raise MethodUnavailable(f"method {self.name!r} needs the library {lib!r}: {e}") from e
        for module in self.imports:
            try:
                importlib.import_module(module)
            except Exception as e:  # pragma: no cover - depends on the environment
                raise MethodUnavailable(f"method {self.name!r}: cannot import {module}: {e}") from e

    def apply(self, model: nn.Module, names: list[str], recipe, bits: int,
              calib: torch.Tensor | None) -> dict:
        """Quantize the named nn.Linear layers of `model` in place. May return extra report
        entries (a dict merged into QuantReport.extra)."""
        raise NotImplementedError

    def dequantize(self, module: nn.Module) -> torch.Tensor:
        """The [out, in] weight `module` computes with, rebuilt from what it stores."""
        raise NotImplementedError

    def bits_per_weight(self, module: nn.Module, recipe, bits: int) -> float:
        """Effective storage bits per weight of `module`, scales and zeros included."""
        raise NotImplementedError

    def after(self, model: nn.Module, names: list[str], recipe, bits: int,
              calib: torch.Tensor | None) -> dict:
        """Checks after the weights were measured (e.g. quanto's calibrated input scales).
        Returns extra report entries."""
        return {}


class LayerwiseMethod(Method):
    """A method that replaces each selected nn.Linear independently: implement
    `quantize_layer(linear, recipe, bits) -> nn.Module`."""

    def quantize_layer(self, linear: nn.Linear, recipe, bits: int) -> nn.Module:
        raise NotImplementedError

    def apply(self, model, names, recipe, bits, calib):
        for name in names:
            lin = model.get_submodule(name)
            new = self.quantize_layer(lin, recipe, bits)
            if new is not lin:
                model.set_submodule(name, new)
        return {}


_REGISTRY: dict[str, Method] = {}
_discovered = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: registers an instance of `cls` under `cls.name`."""
    name = cls.name
    if name in _REGISTRY and type(_REGISTRY[name]) is not cls:
        prev = type(_REGISTRY[name])
        if (prev.__module__, prev.__qualname__) != (cls.__module__, cls.__qualname__):
            raise QuantError(f"method {name!r} registered twice ({prev.__module__} and {cls.__module__})")
    _REGISTRY[name] = cls()
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import qbench.quant as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):   # the core modules are already imported: a no-op
            importlib.import_module(f"qbench.quant.{info.name}")
    _discovered = True


def methods() -> dict[str, Method]:
    """All registered methods, by name."""
    _discover()
    return dict(_REGISTRY)


def get_method(name: str) -> Method:
    _discover()
    return _REGISTRY[name]


def _dist_version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


# --------------------------------------------------------------------------- helpers for methods
TOKENS_PER_BATCH = 16384   # tokens per forward pass over a calibration batch
NOOP_TOL = 1e-6            # a relative error at or below this counts as "unchanged" (weights, activations)


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def forward(model: nn.Module, ids: torch.Tensor):
    """One forward pass of token ids (without a KV cache where the model takes `use_cache`)."""
    params = inspect.signature(model.forward).parameters
    takes = "use_cache" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    return model(ids, use_cache=False) if takes else model(ids)


def calibration_batches(model: nn.Module, calib: torch.Tensor) -> list[torch.Tensor]:
    """The calibration batch split into forward-sized pieces, on the model's device."""
    per_batch = max(1, TOKENS_PER_BATCH // calib.shape[1])
    device = model_device(model)
    return [b.to(device) for b in calib.split(per_batch)]


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """The model in eval mode for the block; its training flag restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def probe_batch(model: nn.Module, calib: torch.Tensor | None) -> tuple[torch.Tensor | None, str]:
    """(token ids, description) of the forward pass that measures the run-time quantizers
    (activations, KV cache, attention maps): the first calibration samples, else random tokens."""
    if calib is not None:
        return calib[:4], "calib[:4]"
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab:
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, vocab, (2, 64), generator=g), "random tokens [2, 64], seed 0"
    return None, "none (no calibration batch and no config.vocab_size): errors not measured"


def logits_of(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)


class InputChain:
    """A forward pre-hook applying functions in order to a module's first input: run-time
    input transforms (rotation.py's online Hadamard, activation.py's quantizer). It lives in
    the module's `qbench_input` attribute and follows the layer when a weight method replaces
    the module (carry_input_chain), so a method sees the same inputs the model computes with."""

    def __init__(self):
        self.fns: list = []

    def __call__(self, module, args):
        if not args:
            return None
        x = args[0]
        for fn in self.fns:
            x = fn(x)
        return (x, *args[1:])


def input_chain(module: nn.Module) -> InputChain:
    """The module's InputChain (installed on first use)."""
    chain = module.__dict__.get("qbench_input")
    if chain is None:
        chain = InputChain()
        module.qbench_input = chain
        module.register_forward_pre_hook(chain)
    return chain


def carry_input_chain(old: nn.Module, new: nn.Module) -> None:
    """Re-installs `old`'s InputChain on `new` (the module a weight method put in its place)."""
    chain = old.__dict__.get("qbench_input")
    if chain is not None and new is not old and new.__dict__.get("qbench_input") is not chain:
        new.qbench_input = chain
        new.register_forward_pre_hook(chain)


def storage_bits(*tensors) -> int:
    """Bits of storage the given tensors occupy; tensor subclasses (quanto's QTensors) are
    flattened into their inner tensors; None entries are ignored."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter):
            inner, _ = t.__tensor_flatten__()
            total += storage_bits(*(getattr(t, a) for a in inner))
        elif isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size() * 8
    return total


def dtype_bits(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits
