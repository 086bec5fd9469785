"""Loading what users have: the paper's format, transformers folders and GGUF files, strictly.

A checkpoint is one of
- "qbench": a folder in the paper's format (config.json with model_type "transformer",
  checkpoint-format.md), run by qbench's own model (modeling.py);
- "transformers": a folder of a transformers causal LM (config.json of any other model_type,
  model.safetensors or sharded safetensors with model.safetensors.index.json, or
  pytorch_model.bin), run by transformers' own model class;
- "gguf": a .gguf file (or a folder holding exactly one), loaded by transformers (`gguf_file=`;
  weights dequantized to float).
`hf:ORG/NAME` is a hub id (downloaded where a hub is reachable); `real:NAME` one of the real models
that `qbench data models NAME` fetched into DATA_DIR/models (qbench/model/real.py); every other
path is local, and a missing one is an error at once: nothing else ever reaches for the network.

The attention kind of a checkpoint: `attn_impl` in the paper's format; the field
`qbench_attention` of config.json (transformers) or the metadata key `qbench.attention` (GGUF),
else softmax; `attention=` forces one per load. Every model routes attention through
qbench.attention.attend (hf_attention.py for transformers' models).

inspect_checkpoint() is cheap (the model is built on the meta device, only file headers are
read) and strict: the weights' tensor names and shapes must be exactly those the config implies
(missing, unexpected and mis-shaped tensors are named); load_model() checks again what
transformers actually loaded.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from .. import paths
from ..attention import kinds
from ..errors import QBenchError, one_line
from ..files import update_digest

FORMATS = ("qbench", "transformers", "gguf")
HUB_PREFIX = "hf:"
REAL_PREFIX = "real:"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, BIN, BIN_INDEX)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")
GGUF_ATTENTION_KEY = "qbench.attention"
CONFIG_ATTENTION_FIELD = "qbench_attention"
# architecture fields that arms comparing attention kinds must share (names as qbench's config has them)
ARCHITECTURE_FIELDS = ("hidden_size", "num_hidden_layers", "num_heads", "kv_heads", "head_dim", "mlp_size",
                       "vocab_size", "rope_theta", "norm_eps", "tie_word_embeddings", "qkv_bias", "bos_token_id",
                       "eos_token_id")
SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size",
                "max_position_embeddings")   # of the paper's config.json: positive integers (or null)
LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class CheckpointError(QBenchError, ValueError):
    """A checkpoint that cannot be used as given: not found, unreadable, or weights that do not
    match their config; or arms that are not the same model. The message names file and field."""


PairError = CheckpointError   # the name the pair API has always raised


@dataclass(frozen=True)
class Source:
    """Where a checkpoint lives: `folder`, its format, and the GGUF file name inside it."""
    given: str
    folder: Path
    format: str
    gguf_file: str | None = None

    @property
    def file(self) -> Path:
        return self.folder / self.gguf_file if self.gguf_file else self.folder


@dataclass
class CheckpointInfo:
    """What inspect_checkpoint found (no weights loaded)."""
    path: str
    source: Source
    format: str
    architecture: str                  # the model class, e.g. LlamaForCausalLM
    model_type: str
    parameters: int
    attention: str                     # the kind this load runs
    attention_source: str              # where it came from
    own_attention: str                 # the kind the checkpoint's files name (before any forcing)
    weight_dtype: str
    max_positions: int | None
    vocab_size: int
    num_layers: int
    linear_layers: dict[str, tuple[int, int]]
    config: object = field(repr=False)
    architecture_fields: dict = field(default_factory=dict)
    gguf_types: dict[str, int] | None = None
    weight_files: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- where
def _looks_like_hub_id(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) is not None


def resolve_source(path) -> Source:
    """The checkpoint at `path` (see the module docstring); CheckpointError if there is none."""
    text = str(path)
    if text.startswith(HUB_PREFIX):
        return _source_in(Path(_download(text[len(HUB_PREFIX):])), text)
    if text.startswith(REAL_PREFIX):
        from .real import real_model_path

        file = real_model_path(text[len(REAL_PREFIX):], fetch=False)
        return Source(text, file.parent, "gguf", file.name)
    p = paths.find(text)   # relative paths also inside the package (the bundled pair, anywhere)
    if not p.exists():
        hint = f" (a hub id needs the prefix {HUB_PREFIX}, e.g. {HUB_PREFIX}{text})" if _looks_like_hub_id(text) else ""
        raise CheckpointError(f"checkpoint not found: {p}{hint}")
    if p.is_file():
        if p.suffix == ".gguf":
            return Source(text, p.parent, "gguf", p.name)
        raise CheckpointError(f"{p}: a file, but not a .gguf file; give a checkpoint folder or a GGUF file")
    return _source_in(p, text)


def _source_in(folder: Path, given: str) -> Source:
    config_file = folder / "config.json"
    if config_file.is_file():
        raw = _read_json(config_file)
        return Source(given, folder, "qbench" if raw.get("model_type") == "transformer" else "transformers")
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return Source(given, folder, "gguf", ggufs[0])
    if ggufs:
        raise CheckpointError(f"{folder}: several GGUF files ({', '.join(ggufs)}); give the path of one")
    raise CheckpointError(f"{folder}: no config.json (and no .gguf file): not a checkpoint folder")


def _download(repo_id: str) -> str:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise CheckpointError(f"{HUB_PREFIX}{repo_id}: HF_HUB_OFFLINE=1, so hub ids cannot be fetched here")
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(repo_id)
    except Exception as err:  # no network, unknown repo, ...
        raise CheckpointError(f"{HUB_PREFIX}{repo_id} could not be fetched from the model hub (offline machines "
                              f"can only use local checkpoints): {one_line(err)}") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


# --------------------------------------------------------------------------- configs
def read_config(folder):
    """The paper-format config of `folder` (QBenchConfig), checked for what qbench computes."""
    from .config import QBenchConfig

    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder}: no config.json")
    raw = _read_json(config_file)
    if raw.get("model_type") != "transformer":
        raise CheckpointError(f"{config_file}: model_type is {raw.get('model_type')!r}, expected 'transformer'")
    for name in SHAPE_FIELDS:   # the config's own properties divide by them
        value = raw.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise CheckpointError(f"{config_file}: field '{name}': expected an integer >= 1, got {value!r}")
    try:
        config = QBenchConfig.from_dict(raw)
    except Exception as err:   # transformers' own validation of the fields
        raise CheckpointError(f"{config_file}: {one_line(err)}") from None
    try:
        config.check_supported()
    except ValueError as err:
        raise CheckpointError(f"{config_file}: {err}") from None
    return config


def _load_config(src: Source):
    if src.format == "qbench":
        return read_config(src.folder)
    where = src.file if src.gguf_file else src.folder / "config.json"
    if src.gguf_file:
        _gguf_header(src.file)   # refuses a truncated or damaged file in our words, before transformers reads it
    config = copy.deepcopy(_hf_config(str(src.folder), src.gguf_file, *_file_key(where)))
    text = config.get_text_config()
    if getattr(text, "attn_logit_softcapping", None) is not None:
        raise CheckpointError(f"{where}: attn_logit_softcapping={text.attn_logit_softcapping} is not supported "
                              "(qbench's attention kinds normalise plain scaled dot products)")
    return config


@lru_cache(maxsize=8)
def _hf_config(folder: str, gguf_file: str | None, where: str, size: int, mtime: int):
    """transformers' config of a folder or GGUF file (cached per file version: parsing a GGUF
    header takes seconds); callers get a copy."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, gguf_file=gguf_file, local_files_only=True)
    except Exception as err:
        raise CheckpointError(f"{where}: config could not be read: {one_line(err)}") from None


def _own_attention(src: Source, config) -> tuple[str, str]:
    """(kind, where it comes from) as the checkpoint's files say."""
    try:
        if src.format == "qbench":
            return kinds.kind_of_attn_impl(config.attn_impl), f"attn_impl={config.attn_impl!r}"
        if src.format == "gguf":
            value = _gguf_header(src.file).metadata.get(GGUF_ATTENTION_KEY)
            return (kinds.get(value).name, f"GGUF {GGUF_ATTENTION_KEY}") if value else ("softmax", "default")
        value = getattr(config, CONFIG_ATTENTION_FIELD, None)
        return (kinds.get(value).name, f"config.json {CONFIG_ATTENTION_FIELD}") if value else ("softmax", "default")
    except kinds.AttentionError as err:
        field_name = "attn_impl" if src.format == "qbench" else CONFIG_ATTENTION_FIELD
        where = (f"{src.file}: metadata '{GGUF_ATTENTION_KEY}'" if src.gguf_file else
                 f"{src.folder / 'config.json'}: field '{field_name}'")
        raise CheckpointError(f"{where}: {err}") from None


def _resolve_attention(src: Source, config, attention: str | None) -> tuple[str, str, str]:
    """(kind this load runs, where it comes from, the checkpoint's own kind)."""
    own, where = _own_attention(src, config)
    if attention is None or attention == own:
        return own, where, own
    forced = kinds.get(attention).name   # AttentionError (a QBenchError) names the kinds
    return forced, f"forced (the checkpoint says {own}: {where})", own


def architecture_fields(config) -> dict:
    """The fields of ARCHITECTURE_FIELDS of any causal LM config (qbench's or transformers')."""
    from .config import QBenchConfig

    if isinstance(config, QBenchConfig):
        return {name: getattr(config, name) for name in ARCHITECTURE_FIELDS}
    c = config.get_text_config()
    heads = c.num_attention_heads
    rope = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", None))
    return {"hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers, "num_heads": heads,
            "kv_heads": getattr(c, "num_key_value_heads", None) or heads,
            "head_dim": getattr(c, "head_dim", None) or c.hidden_size // heads,
            "mlp_size": getattr(c, "intermediate_size", None), "vocab_size": c.vocab_size, "rope_theta": rope,
            "norm_eps": getattr(c, "rms_norm_eps", getattr(c, "layer_norm_eps", None)),
            "tie_word_embeddings": getattr(c, "tie_word_embeddings", None),
            "qkv_bias": getattr(c, "attention_bias", getattr(c, "qkv_bias", None)),
            "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id}


# --------------------------------------------------------------------------- file headers
@dataclass
class GGUFHeader:
    metadata: dict                       # scalar and string fields only
    tensors: dict[str, tuple[tuple[int, ...], str]]   # name -> (torch-order shape, GGML type)
    tokenizer_digest: str


def _file_key(path: Path):
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _gguf_header(path: Path) -> GGUFHeader:
    try:
        return _gguf_header_cached(*_file_key(path))
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err})") from None


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@lru_cache(maxsize=8)
def _gguf_header_cached(path: str, size: int, mtime: int) -> GGUFHeader:
    """Metadata, tensor infos and the tokenizer digest of a GGUF file, read straight from its
    header (the gguf package's reader builds an array view per vocabulary entry: seconds per file).
    A file too short for the tensor data its header declares is refused as truncated."""
    import mmap
    import struct

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            pos = 0

            def take(fmt):
                nonlocal pos
                value = struct.unpack_from(fmt, mm, pos)[0]
                pos += struct.calcsize(fmt)
                return value

            def string():
                nonlocal pos
                n = take("<Q")
                pos += n
                return mm[pos - n:pos].decode("utf-8", errors="replace")

            def value(kind):
                nonlocal pos
                if kind in _GGUF_SCALARS:
                    return take(_GGUF_SCALARS[kind])
                if kind == _GGUF_STRING:
                    return string()
                if kind != _GGUF_ARRAY:
                    raise ValueError(f"unknown metadata value type {kind}")
                item, count = take("<I"), take("<Q")
                if item in _GGUF_SCALARS:
                    pos += struct.calcsize(_GGUF_SCALARS[item]) * count
                else:
                    for _ in range(count):
                        value(item)
                return None   # arrays are not kept (the tokenizer's are digested below)

            if mm[:4] != b"GGUF":
                raise ValueError("no GGUF magic number")
            pos = 4
            version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
            if not 2 <= version <= 3:
                raise ValueError(f"GGUF version {version} (expected 2 or 3)")
            metadata, digest = {}, hashlib.sha256()
            for _ in range(n_kv):
                start = pos
                key = string()
                metadata[key] = value(take("<I"))
                if key.startswith("tokenizer."):
                    digest.update(mm[start:pos])
            infos = []
            for _ in range(n_tensors):
                name = string()
                dims = [take("<Q") for _ in range(take("<I"))]
                infos.append((name, dims, GGMLQuantizationType(take("<I")), take("<Q")))
            alignment = int(metadata.get("general.alignment") or 32)
            data_start = -(-pos // alignment) * alignment
            end = 0
            for _, dims, qtype, offset in infos:
                block, type_size = GGML_QUANT_SIZES[qtype]
                end = max(end, offset + math.prod(dims) // block * type_size)
            if data_start + end > size:
                raise ValueError(f"truncated: the header declares {data_start + end} bytes of tensors, "
                                 f"the file has {size}")
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable GGUF file ({one_line(err)})") from None
    tensors = {name: (tuple(reversed(dims)), qtype.name) for name, dims, qtype, _ in infos}
    return GGUFHeader({k: v for k, v in metadata.items() if v is not None}, tensors, digest.hexdigest()[:16])


def _safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt", device="cpu") as f:
            return {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}
    except Exception as err:
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated or damaged?): "
                              f"{one_line(err)}") from None


def _bin_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    try:
        state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable pytorch_model.bin ({one_line(err)})") from None
    return {name: (tuple(t.shape), str(t.dtype).replace("torch.", "")) for name, t in state.items()}


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder checkpoint: one file, or an index and its shards."""
    folder = Path(folder)
    for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (BIN, BIN_INDEX)):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            weight_map = _read_json(folder / index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{folder / index}: field 'weight_map' missing or empty")
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointError(f"{folder / index}: shard files missing: {', '.join(missing)}")
            return [folder / index] + [folder / s for s in shards]
    raise CheckpointError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)})")


def _file_tensors(folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    files = weight_files(folder)
    if len(files) == 1:
        return (_safetensors_header if files[0].suffix == ".safetensors" else _bin_header)(files[0])
    index, shards = files[0], files[1:]
    weight_map = _read_json(index)["weight_map"]
    tensors = {}
    for shard in shards:
        header = (_safetensors_header if shard.suffix == ".safetensors" else _bin_header)(shard)
        listed = {n for n, s in weight_map.items() if s == shard.name}
        if set(header) != listed:
            gone, extra = sorted(listed - set(header)), sorted(set(header) - listed)
            raise CheckpointError(f"{shard}: does not hold what {index.name} lists for it"
                                  + (f"; missing {_some(gone)}" if gone else "")
                                  + (f"; not listed {_some(extra)}" if extra else ""))
        tensors.update(header)
    return tensors


def _some(names, n=5) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


# --------------------------------------------------------------------------- strict check
def _meta_model(src: Source, config):
    from transformers import AutoModelForCausalLM

    from .hf_attention import NAME
    from .modeling import QBenchForCausalLM

    where = src.file if src.gguf_file else src.folder / "config.json"
    try:
        with torch.device("meta"):
            if src.format == "qbench":
                return QBenchForCausalLM(config)
            return AutoModelForCausalLM.from_config(config, attn_implementation=NAME)
    except Exception as err:
        raise CheckpointError(f"{where}: not a causal LM that transformers can build "
                              f"({one_line(err)})") from None


def _optional_keys(model) -> tuple[set, list, list]:
    tied = set((getattr(model, "all_tied_weights_keys", None) or {}).keys())
    unexpected_ok = list(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])
    missing_ok = list(getattr(model, "_keys_to_ignore_on_load_missing", None) or [])
    return tied, unexpected_ok, missing_ok


def check_tensors(expected: dict[str, tuple], found: dict[str, tuple], model, where: str,
                  num_layers: int | None = None) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped tensors.
    expected/found: name -> shape. Tied weights may be absent; the model's ignore patterns apply."""
    tied, unexpected_ok, missing_ok = _optional_keys(model)
    missing = [n for n in expected if n not in found and n not in tied and not any(re.search(p, n) for p in missing_ok)]
    unexpected = [n for n in found if n not in expected and not any(re.search(p, n) for p in unexpected_ok)]
    shaped = [f"{n} {list(found[n])} (config implies {list(expected[n])})" for n in expected
              if n in found and tuple(found[n]) != tuple(expected[n])]
    if not (missing or unexpected or shaped):
        return
    problems = []
    file_layers = {int(m.group(1)) for n in found if (m := LAYER_RE.search(n))}
    if num_layers is not None and file_layers and max(file_layers) + 1 != num_layers:
        problems.append(f"the config says num_hidden_layers={num_layers} but the weights have "
                        f"{max(file_layers) + 1} layers")
    if shaped:
        problems.append(f"{len(shaped)} tensors have the wrong shape: {_some(shaped, 3)}")
    if missing:
        problems.append(f"{len(missing)} tensors missing: {_some(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors: {_some(unexpected)}")
    raise CheckpointError(f"{where}: the weights do not match the config: " + "; ".join(problems))


def _gguf_expected_names(model, architecture: str, num_layers: int) -> dict[str, str]:
    """GGUF tensor name -> the model's parameter name, by gguf's own tensor-name map (the one
    transformers' GGUF loader uses), built once for the file's architecture and block count."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = next((a for a, n in MODEL_ARCH_NAMES.items() if n == architecture), None)
    if arch is None:
        raise CheckpointError(f"GGUF architecture {architecture!r} is unknown to the gguf package")
    name_map = get_tensor_name_map(arch, num_layers)
    out = {}
    for hf_name in model.state_dict():
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = name_map.get_name(base)
        if gguf_name is not None:
            out[f"{gguf_name}.{suffix}"] = hf_name
    return out


# --------------------------------------------------------------------------- inspect
def inspect_checkpoint(path, attention: str | None = None) -> CheckpointInfo:
    """Format, architecture, parameter count, attention kind, weight dtype (GGUF: quantization
    types), max positions, vocab size, linear layers; raises CheckpointError when the weights'
    tensor names and shapes are not exactly those of the config. Loads no weights."""
    src = resolve_source(path)
    config = _load_config(src)
    kind, kind_source, own = _resolve_attention(src, config, attention)
    model = _meta_model(src, config)
    text = config.get_text_config()
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    gguf_types = None
    if src.format == "gguf":
        header = _gguf_header(src.file)
        mapping = _gguf_expected_names(model, header.metadata.get("general.architecture", ""),
                                       text.num_hidden_layers)
        found = {mapping.get(n, n): shape for n, (shape, _) in header.tensors.items()}
        check_tensors(expected, found, model, str(src.file), text.num_hidden_layers)
        gguf_types = dict(Counter(t for _, t in header.tensors.values()).most_common())
        weight_dtype = "GGUF " + ", ".join(f"{t} x{n}" for t, n in gguf_types.items())
        files = [src.gguf_file]
    else:
        tensors = _file_tensors(src.folder)
        files = [p.name for p in weight_files(src.folder)]
        check_tensors(expected, {n: s for n, (s, _) in tensors.items()}, model, str(src.folder / files[0]),
                      text.num_hidden_layers)
        weight_dtype = ", ".join(f"{d} x{n}" for d, n in Counter(d for _, d in tensors.values()).most_common())
    linear = {n: (m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return CheckpointInfo(
        path=str(path), source=src, format=src.format, architecture=type(model).__name__,
        model_type=config.model_type, parameters=sum(p.numel() for p in model.parameters()), attention=kind,
        attention_source=kind_source, own_attention=own, weight_dtype=weight_dtype,
        max_positions=getattr(text, "max_position_embeddings", None), vocab_size=text.vocab_size,
        num_layers=text.num_hidden_layers, linear_layers=linear, config=config,
        architecture_fields=architecture_fields(config), gguf_types=gguf_types, weight_files=files)


# --------------------------------------------------------------------------- hashes
def checkpoint_hash(path, attention: str | None = None) -> str:
    """Content hash of what makes a checkpoint's numbers (16 hex digits): config.json, the weight
    files and the tokenizer files of a folder; the bytes of a GGUF file. An attention kind forced
    to differ from the checkpoint's own is part of the hash."""
    src = resolve_source(path)
    if src.format == "gguf":
        base = _file_sha256(*_file_key(src.file))
    else:
        folder = src.folder
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder}: no config.json")
        tokenizer = {p.name for p in folder.glob("*token*") if p.is_file()}
        tokenizer |= {n for n in TOKENIZER_FILES if (folder / n).is_file()}
        digest = hashlib.sha256()
        for name in ["config.json"] + [p.name for p in weight_files(folder)] + sorted(tokenizer):
            digest.update(name.encode())
            update_digest(digest, folder / name)
        base = digest.hexdigest()[:16]
    if attention is not None:
        own, _ = _own_attention(src, _load_config(src) if src.format != "gguf" else None)
        if kinds.get(attention).name != own:
            return hashlib.sha256(f"{base}:attention={attention}".encode()).hexdigest()[:16]
    return base


@lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime: int) -> str:
    return update_digest(hashlib.sha256(), path).hexdigest()[:16]


def tokenizer_fingerprint(src: Source) -> dict:
    """What identifies a checkpoint's tokenizer cheaply: the tokenizer files' hashes (folders) or
    the digest of the GGUF's tokenizer.* metadata."""
    if src.format == "gguf":
        return {"gguf tokenizer metadata": _gguf_header(src.file).tokenizer_digest}
    files = {n: src.folder / n for n in TOKENIZER_FILES if (src.folder / n).is_file()}
    if not files:
        raise CheckpointError(f"{src.folder}: no tokenizer files ({' or '.join(TOKENIZER_FILES[:2])})")
    return {name: _file_sha256(*_file_key(p)) for name, p in files.items()}


# --------------------------------------------------------------------------- load
@dataclass
class Checkpoint:
    """A loaded model with what identifies it."""
    attention: str       # the kind it runs (a name of qbench.attention.kinds)
    path: str
    model: torch.nn.Module
    tokenizer: object
    content_hash: str
    format: str = "qbench"
    info: CheckpointInfo | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:   # the pair API's name
        return self.attention


def load_model(path, attention: str | None = None, device="cpu", dtype=torch.float32) -> Checkpoint:
    """Inspect (strictly), then load model and tokenizer; the model in eval mode on `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hf_attention import NAME

    with _gguf_parsed_once():
        info = inspect_checkpoint(path, attention)
        src = info.source
        where = src.file if src.gguf_file else src.folder
        extra = {} if src.format == "qbench" else {"attn_implementation": NAME}
        try:
            model, loading = AutoModelForCausalLM.from_pretrained(
                src.folder, config=info.config, gguf_file=src.gguf_file, dtype=dtype, local_files_only=True,
                output_loading_info=True, **extra)
        except Exception as err:
            raise CheckpointError(f"{where}: weights could not be loaded: {one_line(err)}") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(src.folder, gguf_file=src.gguf_file, local_files_only=True)
        except Exception as err:
            raise CheckpointError(f"{where}: tokenizer could not be loaded: {one_line(err)}") from None
    tied, _, _ = _optional_keys(model)
    bad = {k: sorted(set(v) - tied) for k, v in loading.items() if k != "error_msgs" and set(v) - tied}
    if bad or loading.get("error_msgs"):
        raise CheckpointError(f"{where}: transformers loaded the weights with problems: "
                              + "; ".join(f"{k}: {_some(v)}" for k, v in bad.items())
                              + "; ".join(loading.get("error_msgs") or []))
    if info.attention != info.own_attention:
        setattr(model.config, CONFIG_ATTENTION_FIELD, info.attention)
    if src.format == "gguf":
        # transformers dequantizes GGUF tensors into plain float weights but still marks the model as
        # quantized, which refuses .float()/.to(dtype) and makes save_pretrained write a GGUF
        # quantization_config: after loading it is an ordinary float model
        model.is_quantized, model.hf_quantizer = False, None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        _gguf_special_tokens(tokenizer, _gguf_header(src.file).metadata)
    model = model.to(device).eval()
    if src.format != "qbench":
        check_routing(model, str(where))
    return Checkpoint(info.attention, str(path), model, tokenizer, checkpoint_hash(path, attention), src.format, info)


load_checkpoint = load_model   # the pair API's name


@contextlib.contextmanager
def _gguf_parsed_once():
    """Inside the block, transformers' GGUF loading (config, weights, tokenizer) parses each GGUF file
    once instead of once per step, and builds gguf's tensor-name map once per architecture instead
    of once per submodule: both are pure functions of their arguments (seconds each on SmolLM2;
    they made most of its load time). transformers imports both from `gguf` at call time."""
    import gguf

    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers, maps = {}, {}

    def reader(path, *args, **kwargs):
        key = (str(Path(path).resolve()), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader_class(path, *args, **kwargs)
        return readers[key]

    def tensor_name_map(arch, n_blocks):
        if (arch, n_blocks) not in maps:
            maps[(arch, n_blocks)] = name_map(arch, n_blocks)
        return maps[(arch, n_blocks)]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, tensor_name_map
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


GGUF_SPECIAL_TOKENS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
                       "pad": "padding_token_id"}


def _gguf_special_tokens(tokenizer, metadata: dict) -> None:
    """The special tokens the GGUF names (tokenizer.ggml.*_token_id): transformers' conversion of
    SmolLM2's tokenizer gives eos <|im_start|> (id 1) where the file says 2 (<|im_end|>)."""
    for name, key in GGUF_SPECIAL_TOKENS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer) and \
                getattr(tokenizer, f"{name}_token_id") != token_id:
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(token_id))


def check_routing(model, where: str = "model") -> None:
    """Run two tokens through `model` and check that exactly its attention_modules() called
    qbench's attention, one per layer: no attention path bypasses attend."""
    from .hf_attention import attention_modules, recording_calls

    listed = {id(m) for _, m in attention_modules(model)}
    param = next(model.parameters())
    ids = torch.zeros(1, 2, dtype=torch.long, device=param.device)
    with torch.no_grad(), recording_calls() as calls:
        model(input_ids=ids, use_cache=False)
    n_layers = model.config.get_text_config().num_hidden_layers
    if calls != listed or len(listed) != n_layers:
        raise CheckpointError(f"{where}: {type(model).__name__} does not route attention through qbench's "
                              f"attention function ({len(calls)} of {len(listed)} attention modules called it; "
                              f"{n_layers} layers): unsupported model class")
    for _, m in attention_modules(model):
        m.attn_quant = None   # where an attention-side quantizer goes, as on qbench's own Attention
