"""Issue 13's loading holes, one test each, through the pair API that existed before strict
loading (check_pair / load_pair / PairError): each hole was accepted up front before."""
import json
import shutil

import pytest
import torch

from qbench.model import PairError, check_pair, load_pair
from conftest import save_tiny


def edit_config(folder, **fields):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


@pytest.fixture()
def pair_copy(tmp_path, tiny_pair):
    return tuple(shutil.copytree(p, tmp_path / p.name) for p in tiny_pair)


def test_config_with_fewer_layers_than_its_weights_is_refused(tmp_path, tokenizer):
    """num_hidden_layers: 2 over 4-layer weights: half the weights used to be dropped silently."""
    pair = [save_tiny(tmp_path / kind, kind, tokenizer, num_hidden_layers=4) for kind in ("softmax", "softpick")]
    for folder in pair:
        edit_config(folder, num_hidden_layers=2)
    with pytest.raises(PairError, match=r"num_hidden_layers=2 but the weights have 4 layers.*unexpected tensors: "
                                        r"model\.layers\.2\.attn\.k_proj\.weight"):
        check_pair(*pair)
    with pytest.raises(PairError, match="num_hidden_layers=2"):
        load_pair(*pair)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_safetensors_is_refused_before_any_work(pair_copy, damage):
    weights = pair_copy[1] / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x07" * 4096, "empty": b""}[damage])
    with pytest.raises(PairError, match=r"softpick/model\.safetensors: not a valid safetensors file"):
        check_pair(*pair_copy)


def test_config_with_a_wrong_hidden_size_is_refused(pair_copy):
    for folder in pair_copy:
        edit_config(folder, hidden_size=128)
    with pytest.raises(PairError, match=r"tensors have the wrong shape: .*model\.embeddings\.weight \[300, 64\] "
                                        r"\(config implies \[300, 128\]\)"):
        check_pair(*pair_copy)


def test_mistyped_org_name_path_fails_fast_without_network(monkeypatch, tmp_path, tiny_pair):
    """`org/softmax` (a folder that does not exist) is a local path: no hub download is attempted."""
    import huggingface_hub

    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a hub download was attempted")

    for name in ("snapshot_download", "hf_hub_download"):
        monkeypatch.setattr(huggingface_hub, name, no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PairError, match=r"not found: org/softmax \(a hub id needs the prefix hf:"):
        check_pair("org/softmax", tiny_pair[1])
    assert calls == []


def test_bin_weights_are_checked_too(tmp_path, tokenizer):
    """pytorch_model.bin: the same strictness as safetensors."""
    from safetensors.torch import load_file

    from qbench.model import new_model, save_checkpoint

    folders = []
    for kind in ("softmax", "softpick"):
        model = new_model(kind, hidden_size=64, num_hidden_layers=2, num_heads=4, vocab_size=300)
        save_checkpoint(model, tokenizer, tmp_path / kind)
        weights = tmp_path / kind / "model.safetensors"
        torch.save(load_file(weights), tmp_path / kind / "pytorch_model.bin")
        weights.unlink()
        folders.append(tmp_path / kind)
    assert (folders[0] / "pytorch_model.bin").is_file()
    check_pair(*folders)
    load_pair(*folders)
    state = torch.load(folders[1] / "pytorch_model.bin", weights_only=True)
    state["model.layers.0.mlp.up_proj.weight"] = state["model.layers.0.mlp.up_proj.weight"][:10]
    torch.save(state, folders[1] / "pytorch_model.bin")
    with pytest.raises(PairError, match=r"model\.layers\.0\.mlp\.up_proj\.weight \[10, 64\]"):
        check_pair(*folders)
