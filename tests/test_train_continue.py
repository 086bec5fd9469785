"""`qbench train --from CHECKPOINT`: continued training of an existing model with its attention
switched (issue 15's retrofit), on a tiny random paper-format checkpoint saved here, and on a
tiny transformers Llama (CPU, seconds)."""
import json

import numpy as np
import pytest
import torch

from conftest import save_tiny
from qbench.model import checkpoint_hash, load_checkpoint, read_config
from qbench.train import data as D
from qbench.train import launch as L
from qbench.train import loop
from qbench.train import train as T
from qbench.train.presets import PRESETS
from train_fixtures import make_corpus, read_log, spec


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def retrofit(monkeypatch):
    """The retrofit recipe at test size (the tiny checkpoints know 256 positions)."""
    monkeypatch.setitem(PRESETS, "retrofit", {**PRESETS["retrofit"], "context": 64, "batch_size": 8, "micro_batch": 4,
                                              "steps": 4, "warmup_steps": 1, "lr": 1e-3, "eval_windows": 4,
                                              "save_dtype": "float32"})


def continued(corpus, out, kind, start, **changes):
    return spec(corpus, out, kind, preset="retrofit", start=str(start), tokens=None, tokenizer=None,
                corpus=str(corpus), steps=None, **changes)


def test_softmax_checkpoint_continued_with_softpick(corpus, tmp_path, tokenizer, retrofit):
    source = save_tiny(tmp_path / "source", "softmax", tokenizer, seed=3)
    out = tmp_path / "softpick-ft"
    model, summary = T.train_model(continued(corpus, out, "softpick", source))
    assert read_config(out).attention_kind == "softpick"
    assert read_config(source).attention_kind == "softmax"                  # the source is left as it was
    start = summary["start"]
    assert start["attention_before"] == "softmax" and start["attention"] == "softpick"
    assert start["format"] == "qbench" and start["content_hash"] == checkpoint_hash(source)
    assert summary["init_hash"] == loop.state_hash(load_checkpoint(source).model)   # starts from its weights
    # the corpus is encoded with the checkpoint's own tokenizer, into a token file of its own
    token_file = corpus / summary["token_file"]["path"].split("/")[-1]
    assert token_file.name == f"train.tokens.{D.tokenizer_fingerprint(tokenizer)[:12]}.npy"
    assert D.read_sidecar(token_file)["tokenizer_sha256"] == summary["tokenizer"]["fingerprint"]
    assert summary["tokenizer"]["path"] == "the --from checkpoint's own"
    assert summary["steps"] == 4 and summary["distributed"]["accumulation_steps"] == 2
    losses = [float(r["loss"]) for r in read_log(out)]
    assert len(losses) == 4 and all(np.isfinite(losses))
    before, after = load_checkpoint(source).model.state_dict(), load_checkpoint(out).model.state_dict()
    assert max(float((before[k] - after[k]).abs().max()) for k in before) > 1e-4
    x = torch.from_numpy(D.load_tokens(token_file)[:64].astype(np.int64))[None]
    with torch.no_grad():
        assert torch.equal(model.eval()(x).logits, load_checkpoint(out).model(x).logits)
    assert summary["heldout"]["perplexity"] < summary["heldout"]["unigram_perplexity"] * 10


def test_continued_pair_shares_start_data_and_recipe(corpus, tmp_path, tokenizer, retrofit):
    source = save_tiny(tmp_path / "source", "softmax", tokenizer)
    pair = L.train_pair(continued(corpus, tmp_path / "ft", "pair", source, evaluate=False), concurrent=False)
    assert pair["same_init"] and pair["same_data_order"] and pair["same_recipe"]
    assert pair["start"]["content_hash"] == checkpoint_hash(source)
    assert [read_config(tmp_path / "ft" / kind).attention_kind for kind in T.KINDS] == list(T.KINDS)
    logs = [read_log(tmp_path / "ft" / kind) for kind in T.KINDS]
    assert [r["batch_hash"] for r in logs[0]] == [r["batch_hash"] for r in logs[1]]
    assert [r["loss"] for r in logs[0]] != [r["loss"] for r in logs[1]]


def _tiny_llama(folder, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_transformers_model_is_trained_and_saved_in_its_own_format(corpus, tmp_path, tokenizer, retrofit):
    """A transformers Llama, loaded by qbench (attention routed through attend) and switched to
    softpick: our loss is the model's own loss, and the result is saved with save_pretrained plus
    config.json's qbench_attention, which the loader reads back."""
    from transformers import AutoTokenizer

    from qbench.model import checkpoint_hash, inspect_checkpoint, load_model

    source = _tiny_llama(tmp_path / "llama", tokenizer)
    model = load_model(source, attention="softpick").model.eval()
    x = torch.from_numpy(D.load_tokens(corpus / "train.tokens.u16")[:65].astype(np.int64))[None]
    with torch.no_grad():
        ours = loop.lm_loss(loop.forward_hidden(model, x[:, :-1]), loop.head_weight(model), x[:, 1:])
        theirs = model(x, labels=x).loss
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)

    out = tmp_path / "llama-ft"
    trained, summary = T.train_model(continued(corpus, out, "softpick", source))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["qbench_attention"] == "softpick"
    assert summary["checkpoint"]["format"] == "transformers"
    assert summary["start"]["content_hash"] == checkpoint_hash(source) and summary["start"]["attention_before"] == "softmax"
    assert inspect_checkpoint(out).attention == "softpick"
    reloaded = load_model(out).model.eval()
    with torch.no_grad():
        assert torch.allclose(trained.eval()(x).logits, reloaded(x).logits, atol=1e-5)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tokenizer.get_vocab()


def test_from_needs_a_preset_without_shape_and_the_reverse(corpus, tmp_path, tokenizer, retrofit):
    source = save_tiny(tmp_path / "source", "softmax", tokenizer)
    with pytest.raises(T.TrainError, match="without one"):
        T.check_spec(spec(corpus, tmp_path / "o", "softpick", start=str(source)))
    with pytest.raises(T.TrainError, match="pass --from"):
        T.check_spec(spec(corpus, tmp_path / "o", "softpick", preset="retrofit"))


def test_from_a_path_that_is_no_checkpoint(corpus, tmp_path, tokenizer, retrofit, capsys):
    """--from a folder without a checkpoint: a clear error naming it, before training."""
    (tmp_path / "empty").mkdir()
    code = T.main(["--preset", "retrofit", "--from", str(tmp_path / "empty"), "--attention", "softpick", "--out",
                   str(tmp_path / "o"), "--corpus", str(corpus), "--device", "cpu", "--no-progress"])
    assert code == 2 and "empty" in capsys.readouterr().err
    assert not (tmp_path / "o" / "config.json").exists()
