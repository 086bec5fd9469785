"""Recipes: one YAML file per recipe in recipes/, parsed and validated before any work.

    name: hqq                    # must equal the file name (recipes/hqq.yaml)
    method: hqq                  # registry key (qbench/quant/<method>.py)
    bits: [8, 4, 3, 2]           # weight widths this recipe supports
    weight: {group_size: 64}     # method-specific fields (see the method's weight_fields)
    activation: {...}            # only for methods that quantize activations (act, quanto)
    layers: {include: ["*_proj"], exclude: ["lm_head"]}   # optional; these are the defaults
    calib: {samples: 128, seq_len: 512, seed: 0}          # optional; only for methods that
                                                          # calibrate; these are the defaults
    description: "..."           # optional, free text (not part of the cell key)

Every error names the file and the field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from qbench.paths import REPO_ROOT
from .base import Field, RecipeError, get_method, methods

RECIPES_DIR = REPO_ROOT / "recipes"
SWEEP_FILES = {"paper", "full"}  # sweep files live beside recipes; they are not recipes

DEFAULT_LAYERS = {"include": ["*_proj"], "exclude": ["lm_head"]}
DEFAULT_CALIB = {"samples": 128, "seq_len": 512, "seed": 0}

_TOP_FIELDS = ("name", "method", "bits", "weight", "activation", "layers", "calib", "description")
_LAYER_FIELDS = {
    "include": Field(list, default=DEFAULT_LAYERS["include"], doc="fnmatch patterns on module names"),
    "exclude": Field(list, default=DEFAULT_LAYERS["exclude"], doc="fnmatch patterns on module names"),
}
_CALIB_FIELDS = {
    "samples": Field(int, default=DEFAULT_CALIB["samples"], min=1),
    "seq_len": Field(int, default=DEFAULT_CALIB["seq_len"], min=1),
    "seed": Field(int, default=DEFAULT_CALIB["seed"]),
}


@dataclass(frozen=True)
class Recipe:
    name: str
    method: str
    bits: tuple[int, ...]
    weight: Mapping[str, Any]
    activation: Mapping[str, Any] | None = None
    layers: Mapping[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_LAYERS))
    calib: Mapping[str, int] | None = None
    description: str = ""
    source: str = "<dict>"

    def to_dict(self) -> dict:
        """The resolved recipe (defaults filled in): everything that can change numbers.
        `description` and `source` are left out on purpose."""
        d = {
            "name": self.name,
            "method": self.method,
            "bits": list(self.bits),
            "weight": dict(self.weight),
            "layers": {k: list(v) for k, v in self.layers.items()},
        }
        if self.activation is not None:
            d["activation"] = dict(self.activation)
        if self.calib is not None:
            d["calib"] = dict(self.calib)
        return d

    def label(self, bits: int | None) -> str:
        """The table column label of this recipe at a weight width ("4-bit", "W4A8", ...)."""
        if self.activation:
            return f"W{bits}A{self.activation.get('bits') or self.activation.get('dtype')}"
        return f"{bits}-bit"

    def replace(self, **changes) -> "Recipe":
        """A copy with fields changed, validated again (e.g. a smaller calib in tests)."""
        d = self.to_dict()
        d["description"] = self.description
        d.update(changes)
        return parse_recipe(d, source=self.source)


def load_recipe(path_or_name: str | Path | Recipe) -> Recipe:
    """A recipe from a YAML path, or from a name resolving to recipes/<name>.yaml."""
    if isinstance(path_or_name, Recipe):
        return path_or_name
    p = Path(path_or_name)
    is_path = p.suffix in (".yaml", ".yml") or "/" in str(path_or_name) or p.exists()
    if not is_path:
        p = RECIPES_DIR / f"{path_or_name}.yaml"
        if not p.exists():
            raise RecipeError(str(p), None, f"no recipe named {str(path_or_name)!r}; "
                              f"available: {available_recipes()}")
    source = str(p)
    if not p.is_file():
        raise RecipeError(source, None, "no such recipe file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(source, None, f"not valid YAML: {e}") from e
    return parse_recipe(data, source=source, expected_name=p.stem)


def available_recipes() -> list[str]:
    """Names of the recipe files in recipes/ (sweep files, which have a `grid`, are skipped)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if not is_sweep_file(p))


def is_sweep_file(path: Path) -> bool:
    if path.stem in SWEEP_FILES:
        return True
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(data, Mapping) and "grid" in data


def parse_recipe(data: Any, source: str = "<dict>", expected_name: str | None = None) -> Recipe:
    if not isinstance(data, Mapping):
        raise RecipeError(source, None, f"a recipe is a mapping of fields, got {type(data).__name__}")
    for key in data:
        if key not in _TOP_FIELDS:
            raise RecipeError(source, str(key), f"unknown field; known fields: {list(_TOP_FIELDS)}")
    for key in ("name", "method"):
        if key not in data:
            raise RecipeError(source, key, "missing (required)")
    name = Field(str).check(data["name"], source, "name")
    if expected_name is not None and name != expected_name:
        raise RecipeError(source, "name", f"{name!r} must equal the file name {expected_name!r}")
    method_name = Field(str).check(data["method"], source, "method")
    known = methods()
    if method_name not in known:
        raise RecipeError(source, "method", f"unknown method {method_name!r}; known: {sorted(known)}")
    m = get_method(method_name)

    # weight
    raw_w = data.get("weight", {})
    if raw_w is None:
        raw_w = {}
    if not isinstance(raw_w, Mapping):
        raise RecipeError(source, "weight", f"expected a mapping, got {type(raw_w).__name__}")
    weight = check_section(raw_w, m.weight_schema(raw_w, source), source, "weight")

    # bits (the weight widths)
    if "bits" in data:
        bits = _check_bits(data["bits"], m, weight, source)
    else:
        derived = m.default_bits(weight)
        if derived is None:
            raise RecipeError(source, "bits", "missing (required): the weight widths this recipe supports")
        bits = tuple(derived)

    # activation
    raw_a = data.get("activation")
    if raw_a is not None and m.activation_fields is None:
        raise RecipeError(source, "activation", f"method {m.name!r} does not quantize activations")
    activation = None
    if m.activation_fields is not None:
        if raw_a is None and m.activation_required:
            raise RecipeError(source, "activation", f"missing (required by method {m.name!r})")
        if raw_a is not None:
            if not isinstance(raw_a, Mapping):
                raise RecipeError(source, "activation", f"expected a mapping, got {type(raw_a).__name__}")
            activation = check_section(raw_a, m.activation_fields, source, "activation")

    # layers
    raw_l = data.get("layers", {}) or {}
    if not isinstance(raw_l, Mapping):
        raise RecipeError(source, "layers", f"expected a mapping, got {type(raw_l).__name__}")
    layers = check_section(raw_l, _LAYER_FIELDS, source, "layers")
    for k, pats in layers.items():
        for i, pat in enumerate(pats):
            if not isinstance(pat, str) or not pat:
                raise RecipeError(source, f"layers.{k}[{i}]", f"expected a non-empty string pattern, got {pat!r}")
        layers[k] = list(pats)

    description = Field(str, default="").check(data.get("description", ""), source, "description")

    recipe = Recipe(name=name, method=method_name, bits=bits, weight=weight, activation=activation,
                    layers=layers, calib=None, description=description, source=source)

    # calib: allowed exactly when the recipe calibrates
    raw_c = data.get("calib")
    if m.needs_calib(recipe):
        if raw_c is None:
            raw_c = {}
        if not isinstance(raw_c, Mapping):
            raise RecipeError(source, "calib", f"expected a mapping, got {type(raw_c).__name__}")
        calib = check_section(raw_c, _CALIB_FIELDS, source, "calib")
        recipe = dataclasses.replace(recipe, calib=calib)
    elif raw_c is not None:
        raise RecipeError(source, "calib", f"this recipe (method {m.name!r}) uses no calibration data; remove the field")

    m.validate(recipe)
    return recipe


def _check_bits(raw: Any, m, weight: dict, source: str) -> tuple[int, ...]:
    supported = m.supported_bits(weight)
    if not isinstance(raw, list) or not raw:
        raise RecipeError(source, "bits", f"expected a non-empty list of integers, got {raw!r}")
    out = []
    for i, b in enumerate(raw):
        if not isinstance(b, int) or isinstance(b, bool):
            raise RecipeError(source, f"bits[{i}]", f"expected an integer, got {b!r}")
        if b not in supported:
            raise RecipeError(source, "bits", f"{b}-bit is not supported by method {m.name!r} "
                              f"(supports {list(supported)})")
        if b in out:
            raise RecipeError(source, "bits", f"{b} listed twice")
        out.append(b)
    return tuple(out)


def check_section(raw: Mapping, schema: Mapping[str, Field], source: str, section: str) -> dict:
    """Validates one mapping against its fields; fills defaults. Field paths are
    '<section>.<field>'."""
    for key in raw:
        if key not in schema:
            raise RecipeError(source, f"{section}.{key}", f"unknown field; known: {sorted(schema)}")
    out = {}
    for key, f in schema.items():
        if key in raw:
            out[key] = f.check(raw[key], source, f"{section}.{key}")
        elif f.required:
            raise RecipeError(source, f"{section}.{key}", "missing (required)")
        else:
            out[key] = list(f.default) if isinstance(f.default, list) else f.default
    return out
