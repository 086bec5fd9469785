"""`qbench train`: the debug preset on a tiny generated corpus (CPU, seconds)."""
import json

import numpy as np
import pytest
import torch

from conftest import make_tokenizer
from qbench.train import data as D
from qbench.train import launch as L
from qbench.train import loop
from qbench.train import train as T
from qbench.train.start import fresh_model
from qbench.train.corpus import DOC_LINE
from qbench.train.presets import PRESETS
from train_fixtures import STEPS, make_corpus, read_log, spec


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a busy CPU run far faster on one thread than on several that wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "softpick"
    model, summary = T.train_model(spec(corpus, out, "softpick"))
    return out, model, summary


def test_debug_run_learns_and_logs(trained):
    out, _, summary = trained
    rows = read_log(out)
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert list(rows[0]) == list(loop.LOG_COLUMNS)
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])
    assert int(rows[-1]["tokens"]) == summary["tokens_seen"] == STEPS * 8 * 64
    held = summary["heldout"]
    assert held["perplexity"] < held["unigram_perplexity"]
    for key in ("command", "preset", "seed", "steps", "tokens_seen", "train_seconds", "device", "versions",
                "parameters", "init_hash", "data_order_hash"):
        assert key in summary, key
    assert summary["versions"]["torch"] == torch.__version__
    assert json.loads((out / T.SUMMARY_FILE).read_text()) == json.loads(json.dumps(summary))


def test_checkpoint_reloads_with_identical_logits(trained, corpus):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qbench.model import read_config

    out, model, summary = trained
    config = read_config(out)
    assert config.model_type == "transformer" and config.attn_impl == "parallel_softpick_attn"
    assert config.max_position_embeddings == 64 and config.bos_token_id == 1
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.from_numpy(T.load_tokens(corpus / "train.tokens.u16")[:64].astype(np.int64))[None]
    with torch.no_grad():
        assert torch.equal(model.eval()(x).logits, reloaded(x).logits)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == make_tokenizer().get_vocab()
    assert AutoTokenizer.from_pretrained(out).model_max_length == 64
    # the summary's held-out perplexity is that of the saved weights
    tok = AutoTokenizer.from_pretrained(out)
    windows = T.heldout_windows(corpus / "heldout_eval.txt", tok, 64, PRESETS["debug"]["eval_windows"])
    ppl = loop.evaluate_perplexity(reloaded, windows, torch.device("cpu"), autocast=False)
    assert ppl == pytest.approx(summary["heldout"]["perplexity"], rel=1e-4)


def test_same_seed_same_weights(corpus, tmp_path, trained):
    from safetensors.torch import load_file

    out = tmp_path / "again"
    T.train_one(spec(corpus, out, "softpick"))
    first, second = load_file(trained[0] / "model.safetensors"), load_file(out / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert [r["loss"] for r in read_log(out)] == [r["loss"] for r in read_log(trained[0])]
    other = tmp_path / "seed1"
    summary = T.train_one(spec(corpus, other, "softpick", seed=1, steps=2))
    assert summary["init_hash"] != json.loads((out / T.SUMMARY_FILE).read_text())["init_hash"]


def test_bf16_autocast_path(corpus, tmp_path):
    """The GPU recipe (bf16 autocast, fp32 master weights, bf16 checkpoint) on the CPU."""
    out = tmp_path / "bf16"
    model, summary = T.train_model(spec(corpus, out, "softmax", steps=10, precision="bf16-autocast"))
    losses = [float(r["loss"]) for r in read_log(out)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert summary["precision"].startswith("bf16 autocast")
    assert next(model.parameters()).dtype == torch.float32  # debug saves float32


def test_bf16_checkpoint_and_its_perplexity(corpus, tmp_path, monkeypatch):
    """Presets that save bf16 (tiny, small): the summary's perplexity is that of the bf16 weights."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    monkeypatch.setitem(PRESETS, "debug", {**PRESETS["debug"], "save_dtype": "bfloat16"})
    out = tmp_path / "bf16save"
    model, summary = T.train_model(spec(corpus, out, "softpick", steps=4))
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert next(model.parameters()).dtype == torch.bfloat16
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    windows = T.heldout_windows(corpus / "heldout_eval.txt", T.load_tokenizer(out), 64, 8)
    ppl = loop.evaluate_perplexity(reloaded, windows, torch.device("cpu"), autocast=False)
    assert ppl == pytest.approx(summary["heldout"]["perplexity"], rel=1e-4)


def test_pair_shares_init_and_data_order(corpus, tmp_path):
    from qbench.model import check_pair

    pair = L.train_pair(spec(corpus, tmp_path / "pair", "pair", steps=8), concurrent=False)
    assert pair["same_init"] and pair["same_data_order"]
    check_pair(tmp_path / "pair" / "softmax", tmp_path / "pair" / "softpick")
    logs = {kind: read_log(tmp_path / "pair" / kind) for kind in T.KINDS}
    assert [r["batch_hash"] for r in logs["softmax"]] == [r["batch_hash"] for r in logs["softpick"]]
    assert [r["loss"] for r in logs["softmax"]] != [r["loss"] for r in logs["softpick"]]  # attention differs
    assert json.loads((tmp_path / "pair" / T.PAIR_SUMMARY_FILE).read_text())["same_init"] is True
    # their loss curves: `qbench plot-training PAIR` finds both runs and reads every logged step
    from qbench.cli import main
    from qbench.train import curves

    runs = curves.find_runs([tmp_path / "pair"])
    assert list(runs) == ["pair/softmax", "pair/softpick"]
    assert curves.read_log(runs["pair/softpick"])["loss"] == [float(r["loss"]) for r in logs["softpick"]]
    assert main(["plot-training", str(tmp_path / "pair"), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "pair" / "softmax" / T.LOG_FILE).write_text("step,tokens,loss,lr\n1,2048,nan?,0.1\n")
    with pytest.raises(curves.CurveError, match=r"softmax/train_log.csv: row 2, field loss: not a number"):
        curves.read_log(tmp_path / "pair" / "softmax")


@pytest.mark.slow
def test_pair_as_two_processes(corpus, tmp_path):
    """The form the GPU run uses: two `python -m qbench.train.train` processes at once."""
    pair = L.train_pair(spec(corpus, tmp_path / "pair", "pair", steps=3, heldout=None, evaluate=False),
                        concurrent=True)
    assert pair["concurrent_processes"] and pair["same_init"] and pair["same_data_order"]
    for kind in T.KINDS:
        summary = json.loads((tmp_path / "pair" / kind / T.SUMMARY_FILE).read_text())
        assert summary["attention"] == kind and summary["command"] == "qbench train (test)"
        assert len(read_log(tmp_path / "pair" / kind)) == 3


def test_pair_failure_stops_the_other_process(corpus, tmp_path, monkeypatch):
    import sys
    import time

    def fake_argv(spec, inputs, kind, out):
        if kind == "softmax":
            return [sys.executable, "-c", "import time; time.sleep(120)"]
        return [sys.executable, "-c", "import sys; print('the kernel exploded'); sys.exit(3)"]

    monkeypatch.setattr(L, "_child_argv", fake_argv)
    started = time.time()
    with pytest.raises(T.TrainError, match="(?s)training failed for softpick.*the kernel exploded"):
        L.train_pair(spec(corpus, tmp_path / "pair", "pair", evaluate=False), concurrent=True)
    assert time.time() - started < 60


def test_cuda_determinism_settings(monkeypatch):
    """What a CUDA run asks of torch (set here without a GPU, then put back)."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        T._set_determinism(torch.device("cuda"), True)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory
        import os
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def test_sampler_is_seeded_and_covers_the_file():
    a, b = D.WindowSampler(1000, 10, 4, seed=3), D.WindowSampler(1000, 10, 4, seed=3)
    starts = np.concatenate([a.next_starts() for _ in range(30)])
    assert np.array_equal(starts, np.concatenate([b.next_starts() for _ in range(30)]))
    first_epoch = np.sort(starts[:99])
    assert len(set(first_epoch)) == 99 and np.all(np.diff(first_epoch) == 10)  # non-overlapping windows
    assert not np.array_equal(starts, np.concatenate([D.WindowSampler(1000, 10, 4, 4).next_starts()
                                                      for _ in range(30)]))


def test_lr_schedule():
    lrs = [loop.lr_at(s, 1.0, 10, 100, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_unigram_perplexity():
    train = np.array([0, 0, 1, 1], dtype=np.uint16)  # add-one: p(0) = p(1) = 3/8, p(2) = p(3) = 1/8
    assert D.unigram_perplexity(train, np.array([0, 1]), 4) == pytest.approx(8 / 3)
    assert D.unigram_perplexity(train, np.array([2]), 4) == pytest.approx(8)


def test_token_files_raw_and_npy(tmp_path):
    ids = np.array([1, 5, 65535, 2], dtype=np.uint16)
    ids.tofile(tmp_path / "raw.u16")
    np.save(tmp_path / "saved.npy", ids)
    assert np.array_equal(T.load_tokens(tmp_path / "raw.u16"), ids)
    assert np.array_equal(T.load_tokens(tmp_path / "saved.npy"), ids)


def test_heldout_encoding_matches_encode_corpus(corpus, tmp_path):
    from transformers import AutoTokenizer

    from qbench.train.corpus import read_documents
    from qbench.train.tokenizer import encode_corpus

    tok = AutoTokenizer.from_pretrained(corpus / "tokenizer")
    ours = T.encode_documents(tok, read_documents(corpus / "heldout_eval.txt"))
    theirs = encode_corpus(corpus, corpus / "tokenizer", tmp_path / "heldout.u16", split="heldout_eval")
    assert np.array_equal(ours, theirs.astype(np.int64))


def test_tiny_preset_fits_in_10_mb(tmp_path, tokenizer):
    from qbench.model import save_checkpoint

    preset = T.resolve_preset("tiny")
    model = fresh_model(preset, "softmax", 0, tokenizer)
    params = sum(p.numel() for p in model.parameters())
    assert 4.6e6 < params < 4.8e6
    assert preset["steps"] * preset["batch_size"] * preset["context"] >= 250e6
    save_checkpoint(model, tokenizer, tmp_path, dtype=torch.bfloat16)
    # the real 8192-token tokenizer.json adds well under 0.5 MB
    assert (tmp_path / "model.safetensors").stat().st_size < 9.5e6


def test_small_preset_size(tokenizer):
    model = fresh_model(T.resolve_preset("small"), "softpick", 0, tokenizer)
    assert 35e6 < sum(p.numel() for p in model.parameters()) < 36.5e6


def test_token_cache_follows_corpus_and_tokenizer(corpus, tmp_path):
    import shutil

    root = tmp_path / "corpus"
    root.mkdir()
    shutil.copy(corpus / "train.txt", root / "train.txt")
    shutil.copytree(corpus / "tokenizer", root / "tokenizer")
    cache = D.corpus_token_file(root, root / "tokenizer")
    assert cache == root / T.TOKEN_CACHE and D.read_sidecar(cache)["tokens"] == len(T.load_tokens(cache))
    stamp = cache.stat().st_mtime_ns
    assert D.corpus_token_file(root, root / "tokenizer") == cache and cache.stat().st_mtime_ns == stamp  # cached
    with open(root / "train.txt", "a") as f:
        f.write(DOC_LINE.lstrip("\n") + "One more document, to change the corpus.\n")
    before = len(T.load_tokens(cache))
    assert len(T.load_tokens(D.corpus_token_file(root, root / "tokenizer"))) > before  # encoded again
    # a token file encoded with another tokenizer is refused
    make_tokenizer(280).save_pretrained(tmp_path / "other_tok")
    with pytest.raises(T.TrainError, match="another tokenizer"):
        T.resolve_inputs(T.RunSpec(preset="debug", kind="softmax", out=str(tmp_path / "o"), tokens=str(cache),
                                   tokenizer=str(tmp_path / "other_tok"), evaluate=False))


def test_unknown_preset(corpus, tmp_path):
    with pytest.raises(T.TrainError, match="unknown preset 'huge'; valid presets: debug, tiny, small"):
        T.train_one(spec(corpus, tmp_path / "x", preset="huge"))


def test_missing_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "CORPUS_DIR", tmp_path / "nothing")
    with pytest.raises(T.TrainError, match="corpus not built yet.*qbench data corpus"):
        T.train_one(T.RunSpec(preset="debug", kind="softmax", out=str(tmp_path / "out"), device="cpu"))


def test_unwritable_output_folder(corpus, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(T.TrainError, match="not writable"):
        T.train_one(spec(corpus, tmp_path / "afile" / "out"))
    with pytest.raises(T.TrainError, match="is a file"):
        T.train_one(spec(corpus, tmp_path / "afile"))


def test_existing_checkpoint_needs_overwrite(trained, corpus):
    with pytest.raises(T.TrainError, match="--overwrite"):
        T.train_one(spec(corpus, trained[0], "softpick"))


def test_cli_errors_are_clear(tmp_path, capsys, monkeypatch):
    """`python -m qbench.train.train ARGS` (what a pair's children run) goes through `qbench train ARGS`:
    one error line from qbench.cli, exit 2."""
    monkeypatch.setattr(T, "CORPUS_DIR", tmp_path / "nothing")
    assert T.main(["--preset", "nope", "--pair", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qbench train: error: ") and err.count("\n") == 1
    assert "valid presets: debug, tiny, small" in err
    assert T.main(["--preset", "debug", "--attention", "softmax", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "qbench data corpus" in capsys.readouterr().err
    assert T.main(["--preset", "debug", "--attention", "relu", "--out", str(tmp_path / "o")]) == 2
    assert "softmax, softpick" in capsys.readouterr().err


def test_train_command_registers():
    import argparse

    from qbench.train import commands

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--preset", "tiny", "--pair", "--out", "x"])
    assert args.func is commands.cmd_train and args.pair and args.preset == "tiny"


def test_attention_inputs_share_dtype_under_autocast(monkeypatch):
    """Training on CUDA runs under bf16 autocast, and the Triton softpick kernel needs q, k, v of
    one dtype: RoPE must not leave fp32 q, k next to a bf16 v when softpick attention runs. (On
    the CPU the reference stands where the kernel runs on CUDA; the same arguments reach both.)"""
    import dataclasses

    from qbench.attention import kinds
    from qbench.model import new_model

    seen = []

    def spy(q, k, v, *args):   # stands where the kernel runs; None: the reference computes the output
        seen.append((q.dtype, k.dtype, v.dtype))
        return None

    monkeypatch.setitem(kinds.KINDS, "softpick", dataclasses.replace(kinds.KINDS["softpick"], fast=spy))
    model = new_model("softpick", 0, hidden_size=64, num_hidden_layers=1, num_heads=2, vocab_size=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(0, 300, (1, 8)))
    assert seen and all(len(set(dtypes)) == 1 for dtypes in seen), seen


def test_medium_preset_size(tokenizer):
    """GPT-2 small's layers (85M) plus the embeddings of the tokenizer (untied head); with the large
    corpus's 32768 tokens: 135.3M."""
    preset = T.resolve_preset("medium")
    model = fresh_model(preset, "softpick", 0, tokenizer)
    embeddings = 2 * model.config.vocab_size * 768
    assert 84.9e6 < sum(p.numel() for p in model.parameters()) - embeddings < 85.1e6
    assert preset["steps"] * preset["batch_size"] * preset["context"] >= 1e9
    assert preset["batch_size"] % 8 == 0 and (preset["batch_size"] // 4) % preset["micro_batch"] == 0  # 4 + 4 GPUs
