import json
import shutil

import pytest
import torch

from qbench.model import PairError, check_pair, checkpoint_hash, load_pair
from conftest import save_tiny


def test_true_pair_loads(tiny_pair):
    pair = load_pair(*tiny_pair)
    assert (pair.softmax.kind, pair.softpick.kind) == ("softmax", "softpick")
    x = torch.randint(0, 300, (1, 10))
    with torch.no_grad():  # same weights, different attention: different logits
        assert not torch.allclose(pair.softmax.model(x).logits, pair.softpick.model(x).logits)
    assert pair.softmax.content_hash != pair.softpick.content_hash


def test_swapped_pair_refused(tiny_pair):
    with pytest.raises(PairError, match="given as the softmax model"):
        check_pair(tiny_pair[1], tiny_pair[0])


def test_same_attention_twice_refused(tiny_pair):
    with pytest.raises(PairError, match="attn_impl"):
        check_pair(tiny_pair[0], tiny_pair[0])


def test_different_shapes_refused(tmp_path, tokenizer, tiny_pair):
    other = save_tiny(tmp_path / "wide", "softpick", tokenizer, hidden_size=128)
    with pytest.raises(PairError, match="hidden_size: 64 vs 128"):
        check_pair(tiny_pair[0], other)


def test_different_vocab_refused(tmp_path, tiny_pair):
    from conftest import make_tokenizer
    other = save_tiny(tmp_path / "v", "softpick", make_tokenizer(280))
    with pytest.raises(PairError, match="tokenizer"):
        check_pair(tiny_pair[0], other)


def test_missing_folder_and_bad_files(tmp_path, tiny_pair):
    with pytest.raises(PairError, match="not found"):
        check_pair(tmp_path / "nope", tiny_pair[1])
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pair[1], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PairError, match="model.safetensors: not a valid safetensors file"):
        check_pair(tiny_pair[0], broken)   # refused from the header, before any loading
    (broken / "model.safetensors").unlink()
    with pytest.raises(PairError, match="no weights"):
        check_pair(tiny_pair[0], broken)
    cfg = json.loads((tiny_pair[1] / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**cfg, "attn_impl": "parallel_linear_attn"}))
    with pytest.raises(PairError, match="attn_impl"):
        check_pair(tiny_pair[0], broken)


def test_hub_id_offline_says_so(monkeypatch, tiny_pair):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PairError, match="hub"):
        check_pair("zaydzuhri/vanilla-340M-4096-model", tiny_pair[1])


def test_checkpoint_hash_tracks_content(tmp_path, tiny_pair):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_pair[0], copy)
    assert checkpoint_hash(copy) == checkpoint_hash(tiny_pair[0])
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "rope_theta": 500000.0}))
    assert checkpoint_hash(copy) != checkpoint_hash(tiny_pair[0])
