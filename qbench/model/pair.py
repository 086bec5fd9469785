"""Loading checkpoints and pairs: a pair is two checkpoints that differ only in attention."""
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import QBenchError
from ..files import file_sha256, update_digest
from .config import QBenchConfig

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# config fields that must agree between the two models of a pair
ARCHITECTURE_FIELDS = ("hidden_size", "num_hidden_layers", "num_heads", "kv_heads", "mlp_size", "vocab_size",
                       "rope_theta", "norm_eps", "tie_word_embeddings", "qkv_bias", "bos_token_id", "eos_token_id")


class PairError(QBenchError, ValueError):
    """The two checkpoints are not a usable softmax/softpick pair, or one cannot be read."""


@dataclass
class Checkpoint:
    """A loaded model with what identifies it."""
    kind: str            # softmax | softpick
    path: str
    model: torch.nn.Module
    tokenizer: object
    content_hash: str


@dataclass
class Pair:
    softmax: Checkpoint
    softpick: Checkpoint

    def __iter__(self):
        return iter((self.softmax, self.softpick))


def _is_local(path) -> bool:
    return Path(path).exists() or str(path).startswith((".", "/", "~")) or str(path).count("/") != 1


def resolve(path) -> Path:
    """A local checkpoint folder, or a hub id downloaded to the local cache (only where a hub is reachable)."""
    if _is_local(path):
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise PairError(f"checkpoint folder not found: {folder}")
        return folder
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise PairError(f"{path!r} is not a local folder and HF_HUB_OFFLINE=1: hub ids work only where a hub is reachable")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(str(path)))
    except Exception as err:  # no network, unknown repo, ...
        raise PairError(f"{path!r} is not a local folder and could not be fetched from the model hub "
                        f"(offline machines can only use local folders): {type(err).__name__}: {err}") from None


def read_config(folder: Path) -> QBenchConfig:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise PairError(f"{folder}: no config.json")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise PairError(f"{config_file}: not valid JSON ({err})") from None
    if raw.get("model_type") != "transformer":
        raise PairError(f"{config_file}: model_type is {raw.get('model_type')!r}, expected 'transformer'")
    config = QBenchConfig.from_dict(raw)
    try:
        config.check_supported()
    except ValueError as err:
        raise PairError(f"{config_file}: {err}") from None
    return config


def weight_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise PairError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)})")


def checkpoint_hash(path) -> str:
    """sha256 over config.json, the weights and the tokenizer files: what makes a model's numbers."""
    folder = resolve(path)
    digest = hashlib.sha256()
    names = ["config.json", weight_file(folder).name] + sorted(
        p.name for p in folder.glob("*token*") if p.is_file())
    for name in names:
        digest.update(name.encode())
        update_digest(digest, folder / name)
    return digest.hexdigest()[:16]


def load_checkpoint(path, device="cpu", dtype=torch.float32) -> Checkpoint:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve(path)
    config = read_config(folder)
    weight_file(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    except Exception as err:
        raise PairError(f"{folder}: weights could not be loaded: {type(err).__name__}: {err}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as err:
        raise PairError(f"{folder}: tokenizer could not be loaded: {type(err).__name__}: {err}") from None
    return Checkpoint(config.attention_kind, str(path), model, tokenizer, checkpoint_hash(folder))


def check_pair(softmax_path, softpick_path) -> None:
    """Cheap checks (configs and tokenizer files only) that the two folders are a pair; raises PairError."""
    folders = {"softmax": resolve(softmax_path), "softpick": resolve(softpick_path)}
    configs = {}
    for kind, folder in folders.items():
        config = read_config(folder)
        if config.attention_kind != kind:
            raise PairError(f"{folder} was given as the {kind} model but its attn_impl is "
                            f"{config.attn_impl!r} ({config.attention_kind})")
        weight_file(folder)
        configs[kind] = config
    diffs = [f"{name}: {getattr(configs['softmax'], name)} vs {getattr(configs['softpick'], name)}"
             for name in ARCHITECTURE_FIELDS
             if getattr(configs["softmax"], name) != getattr(configs["softpick"], name)]
    if diffs:
        raise PairError("not a pair, the architectures differ: " + "; ".join(diffs))
    tokenizers = [_tokenizer_fingerprint(folders[k]) for k in ("softmax", "softpick")]
    if tokenizers[0] != tokenizers[1]:
        raise PairError("not a pair: the tokenizer files differ "
                        f"({folders['softmax']} vs {folders['softpick']})")


def _tokenizer_fingerprint(folder: Path) -> dict:
    files = {p.name: p for p in folder.iterdir() if p.name in ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")}
    if not files:
        raise PairError(f"{folder}: no tokenizer files (tokenizer.json or tokenizer.model)")
    return {name: file_sha256(p) for name, p in files.items()}


def load_pair(softmax_path, softpick_path, device="cpu", dtype=torch.float32) -> Pair:
    """Both models of a pair, after checking that they are one."""
    check_pair(softmax_path, softpick_path)
    pair = Pair(load_checkpoint(softmax_path, device, dtype), load_checkpoint(softpick_path, device, dtype))
    if pair.softmax.tokenizer.get_vocab() != pair.softpick.tokenizer.get_vocab():
        raise PairError("not a pair: the tokenizers' vocabularies differ")
    return pair
