"""Recipes: one YAML file per recipe in recipes/, parsed and validated before any work.

    name: w4a-rtn                # must equal the file name (recipes/w4a-rtn.yaml)
    method: rtn                  # weight method (registry key, qbench/quant/<module>.py);
                                 #   leave out (with bits and weight) for no weight quantization
    bits: [4]                    # the weight widths this recipe supports (the sweep picks among them)
    weight: {group_size: 128, symmetric: true}          # the method's fields (weight_fields)
    activation: {bits: 8, granularity: per_token, symmetric: true}   # or {format: fp8 | mxfp4 | nvfp4}
    kv_cache: {bits: 4, k_granularity: per_channel, v_granularity: per_token, token_block: 32,
               symmetric: false, sink_tokens: 0}        # or {format: fp8, ...}
    attention: {probs_bits: 8, probs_scale: fixed, scores_bits: null}
    transform: {type: smoothquant, alpha: 0.5}          # or {type: rotation, seed: 0, down_proj: true}
    layers: {include: ["*_proj"], exclude: ["lm_head"]}  # linears of weight / activation quantization
    calib: {samples: 128, seq_len: 512, seed: 0}        # exactly when the recipe calibrates
    description: "..."           # free text (not part of the cell key)

Every section is optional (a recipe needs at least one of weight, activation, kv_cache,
attention; a transform only before weight or activation quantization). Each section is a small
frozen dataclass validated from YAML; every error names the file and the field.
`quantize()` applies transform -> weight -> activation -> kv_cache / attention.

Sweep axes: `recipe.with_axes(act_bits=..., kv_bits=...)` is the recipe with its activation /
KV width replaced (None removes the section, an int is an int width, "fp8" / "mxfp4" / "nvfp4"
a format; a missing section is created with its defaults), validated again.
`recipe.label(bits)` is the table column label ("4-bit", "W4A8", "W8A8 SQ", "KV4 sink4", ...).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from qbench import paths
from qbench.files import read_yaml
from .base import Field, RecipeError, get_method, methods
from .formats import LABEL as FORMAT_LABEL, WIDTH as FORMAT_WIDTH

SWEEP_FILES = {"paper", "full", "attention"}  # sweep files live beside recipes; they are not recipes

DEFAULT_LAYERS = {"include": ["*_proj"], "exclude": ["lm_head"]}
DEFAULT_CALIB = {"samples": 128, "seq_len": 512, "seed": 0}

_TOP_FIELDS = ("name", "method", "bits", "weight", "activation", "kv_cache", "attention", "transform",
               "layers", "calib", "description")
_LAYER_FIELDS = {
    "include": Field(list, default=DEFAULT_LAYERS["include"], doc="fnmatch patterns on module names"),
    "exclude": Field(list, default=DEFAULT_LAYERS["exclude"], doc="fnmatch patterns on module names"),
}
_CALIB_FIELDS = {
    "samples": Field(int, default=DEFAULT_CALIB["samples"], min=1),
    "seq_len": Field(int, default=DEFAULT_CALIB["seq_len"], min=1),
    "seed": Field(int, default=DEFAULT_CALIB["seed"]),
}
_KEEP = object()   # with_axes: leave this axis as the recipe has it


# --------------------------------------------------------------------------- sections
class Section:
    """A recipe section: a frozen dataclass; FIELDS validate its YAML mapping, `resolve` fills
    and checks what depends on other fields."""

    NAME: ClassVar[str]
    FIELDS: ClassVar[dict[str, Field]]

    @classmethod
    def parse(cls, raw: Any, source: str):
        if not isinstance(raw, Mapping):
            raise RecipeError(source, cls.NAME, f"expected a mapping, got {type(raw).__name__}")
        values = check_section(raw, cls.FIELDS, source, cls.NAME)
        return cls(**cls.resolve(values, dict(raw), source))

    @classmethod
    def resolve(cls, v: dict, raw: dict, source: str) -> dict:
        return v

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def fail(cls, source, name, problem):
        raise RecipeError(source, f"{cls.NAME}.{name}", problem)


def _resolve_format(cls, v: dict, raw: dict, source: str, default_granularity: str | None = None) -> None:
    """`bits` for int (required), implied by a float format (writing another width is an error)."""
    fmt = v["format"]
    if fmt == "int":
        if v["bits"] is None:
            cls.fail(source, "bits", "missing (required for format int)")
    else:
        if v["bits"] not in (None, FORMAT_WIDTH[fmt]):
            cls.fail(source, "bits", f"format {fmt} is {FORMAT_WIDTH[fmt]}-bit; leave bits out")
        v["bits"] = FORMAT_WIDTH[fmt]
        if raw.get("symmetric") is False:
            cls.fail(source, "symmetric", f"format {fmt} is symmetric (sign and magnitude)")


def _width_token(fmt: str, bits: int) -> str:
    return str(bits) if fmt == "int" else FORMAT_LABEL[fmt]


@dataclass(frozen=True)
class ActivationConfig(Section):
    """Dynamic fake quantization of each selected linear layer's input (activation.py)."""

    NAME: ClassVar[str] = "activation"
    FIELDS: ClassVar[dict[str, Field]] = {
        "format": Field(str, default="int", choices=("int", "fp8", "mxfp4", "nvfp4")),
        "bits": Field(int, default=None, nullable=True, min=2, max=8, doc="int width (implied by a float format)"),
        "granularity": Field(str, default=None, nullable=True, choices=("per_token", "per_tensor", "block"),
                             doc="one scale per token / per tensor (int, fp8); block (mxfp4, nvfp4)"),
        "symmetric": Field(bool, default=True, doc="int: symmetric grid, or rtn's min/max grid"),
    }
    format: str
    bits: int
    granularity: str
    symmetric: bool

    @classmethod
    def resolve(cls, v, raw, source):
        _resolve_format(cls, v, raw, source)
        blocky = v["format"] in ("mxfp4", "nvfp4")
        if v["granularity"] is None:
            v["granularity"] = "block" if blocky else "per_token"
        elif (v["granularity"] == "block") != blocky:
            cls.fail(source, "granularity", f"{v['granularity']!r} does not go with format {v['format']} "
                     f"({'block' if blocky else 'per_token or per_tensor'})")
        return v

    def token(self) -> str:
        return _width_token(self.format, self.bits)


@dataclass(frozen=True)
class KVCacheConfig(Section):
    """Fake quantization of K and V as attention reads them (attn.py)."""

    NAME: ClassVar[str] = "kv_cache"
    _GRAN = ("per_token", "per_channel", "per_group")
    FIELDS: ClassVar[dict[str, Field]] = {
        "format": Field(str, default="int", choices=("int", "fp8")),
        "bits": Field(int, default=None, nullable=True, min=2, max=8, doc="int width (fp8: 8)"),
        "k_granularity": Field(str, default="per_token", choices=_GRAN),
        "v_granularity": Field(str, default="per_token", choices=_GRAN),
        "group_size": Field(int, default=None, nullable=True, min=1, doc="per_group: channels per group"),
        "token_block": Field(int, default=None, nullable=True, min=1,
                             doc="per_channel: tokens per block (null: the whole sequence)"),
        "symmetric": Field(bool, default=None, nullable=True, doc="int: symmetric, or min/max (default)"),
        "sink_tokens": Field(int, default=0, min=0, doc="first tokens kept in full precision"),
    }
    format: str
    bits: int
    k_granularity: str
    v_granularity: str
    group_size: int | None
    token_block: int | None
    symmetric: bool
    sink_tokens: int

    @classmethod
    def resolve(cls, v, raw, source):
        _resolve_format(cls, v, raw, source)
        if v["symmetric"] is None:
            v["symmetric"] = v["format"] != "int"
        grans = (v["k_granularity"], v["v_granularity"])
        if "per_group" in grans and v["group_size"] is None:
            cls.fail(source, "group_size", "missing (required with per_group)")
        if "per_group" not in grans and v["group_size"] is not None:
            cls.fail(source, "group_size", "only used with per_group; remove it")
        if "per_channel" not in grans and v["token_block"] is not None:
            cls.fail(source, "token_block", "only used with per_channel; remove it")
        return v

    def token(self) -> str:
        short = {"per_token": "t", "per_channel": "c", "per_group": f"g{self.group_size}"}
        s = "KV" + _width_token(self.format, self.bits)
        if (self.k_granularity, self.v_granularity) != ("per_token", "per_token"):
            s += f" K{short[self.k_granularity]}V{short[self.v_granularity]}"
        return s + (f" sink{self.sink_tokens}" if self.sink_tokens else "")


@dataclass(frozen=True)
class AttentionConfig(Section):
    """Fake quantization of the attention scores and probabilities (attn.py)."""

    NAME: ClassVar[str] = "attention"
    FIELDS: ClassVar[dict[str, Field]] = {
        "probs_bits": Field(int, default=None, nullable=True, min=2, max=8),
        "probs_scale": Field(str, default="fixed", choices=("fixed", "row_max"),
                             doc="fixed: s = 1/(2^b-1); row_max: s = row max/(2^b-1)"),
        "scores_bits": Field(int, default=None, nullable=True, min=2, max=8),
    }
    probs_bits: int | None
    probs_scale: str
    scores_bits: int | None

    @classmethod
    def resolve(cls, v, raw, source):
        if v["probs_bits"] is None and v["scores_bits"] is None:
            cls.fail(source, "probs_bits", "missing: give probs_bits or scores_bits (or both)")
        return v

    def token(self) -> str:
        parts = [f"S{self.scores_bits}"] if self.scores_bits else []
        if self.probs_bits:
            parts.append(f"P{self.probs_bits}" + (" rowmax" if self.probs_scale == "row_max" else ""))
        return " ".join(parts)


@dataclass(frozen=True)
class TransformConfig(Section):
    """An outlier-mitigation transform before quantization (smoothquant.py, rotation.py)."""

    NAME: ClassVar[str] = "transform"
    _OF_TYPE: ClassVar[dict[str, dict[str, Field]]] = {
        "smoothquant": {"alpha": Field(float, default=0.5, min=0.0, max=1.0, doc="migration strength")},
        "rotation": {"seed": Field(int, default=0, doc="seed of the random Hadamard matrices"),
                     "down_proj": Field(bool, default=True, doc="online Hadamard on down_proj's input")},
    }
    type: str
    alpha: float | None = None
    seed: int | None = None
    down_proj: bool | None = None

    @classmethod
    def parse(cls, raw, source):
        if not isinstance(raw, Mapping):
            raise RecipeError(source, cls.NAME, f"expected a mapping, got {type(raw).__name__}")
        if "type" not in raw:
            raise RecipeError(source, "transform.type", f"missing (required): one of {list(cls._OF_TYPE)}")
        kind = Field(str, choices=tuple(cls._OF_TYPE)).check(raw["type"], source, "transform.type")
        rest = {k: v for k, v in raw.items() if k != "type"}
        return cls(type=kind, **check_section(rest, cls._OF_TYPE[kind], source, cls.NAME))

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def token(self) -> str:
        if self.type == "rotation":
            return "Rot"
        return "SQ" if self.alpha == 0.5 else f"SQ{self.alpha:g}"


SECTIONS = {c.NAME: c for c in (ActivationConfig, KVCacheConfig, AttentionConfig, TransformConfig)}


# --------------------------------------------------------------------------- the recipe
@dataclass(frozen=True)
class Recipe:
    name: str
    method: str | None                     # None: no weight quantization
    bits: tuple[int, ...]                  # weight widths (() without a weight method)
    weight: Mapping[str, Any]
    activation: ActivationConfig | None = None
    kv_cache: KVCacheConfig | None = None
    attention: AttentionConfig | None = None
    transform: TransformConfig | None = None
    layers: Mapping[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_LAYERS))
    calib: Mapping[str, int] | None = None
    description: str = ""
    source: str = "<dict>"

    def to_dict(self) -> dict:
        """The resolved recipe (defaults filled in): everything that can change numbers.
        `description` and `source` are left out on purpose; absent sections too (a weight-only
        recipe resolves exactly as before sections existed, so its cell keys are unchanged)."""
        d = {
            "name": self.name,
            "method": self.method,
            "bits": list(self.bits),
            "weight": dict(self.weight),
            "layers": {k: list(v) for k, v in self.layers.items()},
        }
        for name in SECTIONS:
            if getattr(self, name) is not None:
                d[name] = getattr(self, name).to_dict()
        if self.calib is not None:
            d["calib"] = dict(self.calib)
        return d

    def replace(self, **changes) -> "Recipe":
        """A copy with fields changed (as in to_dict's form), validated again (e.g. a smaller
        calib in tests; calib=None drops it, for a recipe that no longer calibrates)."""
        d = self.to_dict()
        d["description"] = self.description
        d.update(changes)
        return parse_recipe({k: v for k, v in d.items() if v is not None}, source=self.source)

    def with_axes(self, *, act_bits=_KEEP, kv_bits=_KEEP) -> "Recipe":
        """The recipe with its activation / KV-cache width replaced: None removes the section,
        an int sets an int width, "fp8" (and for activations "mxfp4", "nvfp4") a float format;
        a missing section is created with its defaults. Validated again (RecipeError)."""
        changes: dict[str, Any] = {}
        for name, value in (("activation", act_bits), ("kv_cache", kv_bits)):
            if value is _KEEP:
                continue
            if value is None:
                changes[name] = None
                continue
            old = getattr(self, name)
            sec = {} if old is None else old.to_dict()
            fmt = "int" if isinstance(value, int) and not isinstance(value, bool) else value
            if not isinstance(fmt, str):
                raise RecipeError(self.source, name, f"sweep axis value {value!r}: expected null, an integer "
                                  f"width or a format name")
            if old is not None and fmt != old.format:   # defaults that depend on the format
                sec.pop("granularity", None)
                sec.pop("symmetric", None)
            sec.update(format=fmt, bits=value if fmt == "int" else None)
            changes[name] = sec
        return self.replace(**changes)   # calib stays: it depends on the method and transform only

    def check_bits(self, bits) -> None:
        """RecipeError unless `bits` is a weight width of the recipe (None without a method)."""
        if self.method is None:
            if bits is not None:
                raise RecipeError(self.source, "bits", f"{bits!r}-bit requested, but the recipe has no weight "
                                  f"method (bits must be None)")
        elif not isinstance(bits, int) or isinstance(bits, bool) or bits not in self.bits:
            raise RecipeError(self.source, "bits", f"{bits!r}-bit requested, but the recipe supports "
                              f"{list(self.bits)}")

    def label(self, bits: int | None) -> str:
        """The table column label of this recipe at weight width `bits`: "4-bit", "W4A8",
        "W4AFP8", "MXFP4" (weights and activations), "WMXFP4" (weights only), "W8A8 SQ",
        "W4A4 Rot", "KV4", "KV4 KcVt sink4", "P8", "S8 P8 rowmax", ... (the one place labels
        come from)."""
        self.check_bits(bits)
        m = get_method(self.method) if self.method else None
        w = m.weight_token(self, bits) if m else None
        a = self.activation.token() if self.activation else (m.activation_token(self) if m else None)
        parts = []
        if w is not None and a is None:
            parts.append(f"{w}-bit" if w.isdigit() else f"W{w}")
        elif w is None and a is not None:
            parts.append(f"A{a}")
        elif w is not None:
            parts.append(w if w == a and not w.isdigit() else f"W{w}A{a}")
        for sec in (self.transform, self.kv_cache, self.attention):
            if sec is not None:
                parts.append(sec.token())
        return " ".join(parts)


def needs_calib(recipe: Recipe) -> bool:
    if recipe.transform is not None and recipe.transform.type == "smoothquant":
        return True
    return recipe.method is not None and get_method(recipe.method).needs_calib(recipe)


# --------------------------------------------------------------------------- loading
def load_recipe(path_or_name: str | Path | Recipe) -> Recipe:
    """A recipe from a YAML path, or from a name resolving to recipes/<name>.yaml."""
    if isinstance(path_or_name, Recipe):
        return path_or_name
    p = Path(path_or_name)
    is_path = p.suffix in (".yaml", ".yml") or "/" in str(path_or_name) or p.exists()
    if is_path:
        p = paths.find(p)
    else:
        found = [d / f"{path_or_name}.yaml" for d in paths.recipe_dirs() if (d / f"{path_or_name}.yaml").is_file()]
        if not found:
            raise RecipeError(str(paths.RECIPES_DIR / f"{path_or_name}.yaml"), None,
                              f"no recipe named {str(path_or_name)!r} in {[str(d) for d in paths.recipe_dirs()]}; "
                              f"available: {available_recipes()}")
        p = found[0]
    source = str(p)
    if not p.is_file():
        raise RecipeError(source, None, "no such recipe file")
    try:
        data = read_yaml(p)
    except ValueError as err:
        raise RecipeError(source, None, str(err)) from None
    return parse_recipe(data, source=source, expected_name=p.stem)


def available_recipes() -> list[str]:
    """Names of the recipe files in the recipe folders (sweep files, which have a `grid`, are skipped)."""
    return sorted({p.stem for d in paths.recipe_dirs() for p in d.glob("*.yaml") if not is_sweep_file(p)})


def is_sweep_file(path: Path) -> bool:
    if path.stem in SWEEP_FILES:
        return True
    try:
        data = read_yaml(path)
    except ValueError:
        return False
    return isinstance(data, Mapping) and "grid" in data


def parse_recipe(data: Any, source: str = "<dict>", expected_name: str | None = None) -> Recipe:
    if not isinstance(data, Mapping):
        raise RecipeError(source, None, f"a recipe is a mapping of fields, got {type(data).__name__}")
    for key in data:
        if key not in _TOP_FIELDS:
            raise RecipeError(source, str(key), f"unknown field; known fields: {list(_TOP_FIELDS)}")
    if "name" not in data:
        raise RecipeError(source, "name", "missing (required)")
    name = Field(str).check(data["name"], source, "name")
    if expected_name is not None and name != expected_name:
        raise RecipeError(source, "name", f"{name!r} must equal the file name {expected_name!r}")

    # weight: method, bits, weight
    method_name = Field(str, nullable=True).check(data.get("method"), source, "method")
    raw_w = data.get("weight") or {}
    if not isinstance(raw_w, Mapping):
        raise RecipeError(source, "weight", f"expected a mapping, got {type(raw_w).__name__}")
    if method_name is None:
        if data.get("bits") not in (None, []):
            raise RecipeError(source, "bits", "a recipe without a weight method has no weight widths; "
                              "remove the field (or give a method)")
        if raw_w:
            raise RecipeError(source, "method", "missing (required with a `weight:` section)")
        m, weight, bits = None, {}, ()
    else:
        known = methods()
        if method_name not in known:
            raise RecipeError(source, "method", f"unknown method {method_name!r}; known: {sorted(known)}")
        m = known[method_name]
        weight = check_section(raw_w, m.weight_schema(raw_w, source), source, "weight")
        if "bits" not in data:
            raise RecipeError(source, "bits", "missing (required): the weight widths this recipe supports")
        bits = _check_bits(data["bits"], m, weight, source)

    sections = {n: (None if data.get(n) is None else cls.parse(data[n], source)) for n, cls in SECTIONS.items()}
    if m is None and all(sections[n] is None for n in ("activation", "kv_cache", "attention")):
        raise RecipeError(source, "method", "the recipe quantizes nothing: give a weight method or an "
                          "activation, kv_cache or attention section")
    if sections["transform"] is not None and m is None and sections["activation"] is None:
        raise RecipeError(source, "transform", "a transform only matters before weight or activation "
                          "quantization (it leaves K, V and the attention maps unchanged)")

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

    recipe = Recipe(name=name, method=method_name, bits=bits, weight=weight, layers=layers, calib=None,
                    description=description, source=source, **sections)

    # calib: allowed exactly when the recipe calibrates
    raw_c = data.get("calib")
    if needs_calib(recipe):
        if raw_c is None:
            raw_c = {}
        if not isinstance(raw_c, Mapping):
            raise RecipeError(source, "calib", f"expected a mapping, got {type(raw_c).__name__}")
        recipe = dataclasses.replace(recipe, calib=check_section(raw_c, _CALIB_FIELDS, source, "calib"))
    elif raw_c is not None:
        raise RecipeError(source, "calib", "this recipe uses no calibration data; remove the field")

    if m is not None:
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
