"""Diagnostics: exact values on hand-built maps, kurtosis of known distributions, the chunked path
against the model's full maps, and a reproducible `qbench diagnose` run writing its outputs."""
import gzip
import json
import math
import random

import pytest
import torch

from qbench.diagnostics import (Moments, activation_extremes, attention_sparsity, diagnose_pair, kurtosis,
                                read_quant_errors, sink_rate)
from qbench.diagnostics.collect import chunked_attention_stats, collect, sample_windows
from qbench.model import load_pair

WORDS = ("the quick brown fox jumps over a lazy dog bird in hand is worth two bush beginning was word "
         "and with god it best of times").split()


def main(argv):
    """`qbench diagnose ARGV`."""
    from qbench.cli import main as qbench

    return qbench(["diagnose", *argv])


def make_docs(n=40, seed=1):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))) for _ in range(n)]


def write_heldout(path, docs):
    with (gzip.open if path.suffix == ".gz" else open)(path, "wt", encoding="utf-8") as f:
        f.write("\n\u241e\n".join(docs) + "\n")
    return path


# --------------------------------------------------------------------------- hand-built maps
def causal_uniform(t):
    """Each query spreads its attention uniformly over keys 0..i: mean attention to key 0 = H_t / t."""
    w = torch.tril(torch.ones(t, t))
    return w / w.sum(-1, keepdim=True)


def sink_map(t, to_first):
    """Query i gives `to_first` to key 0 (all of it for query 0) and the rest to itself."""
    w = torch.zeros(t, t)
    w[0, 0] = 1.0
    for i in range(1, t):
        w[i, 0], w[i, i] = to_first, 1.0 - to_first
    return w


def test_sink_rate_and_sparsity_on_hand_built_maps():
    t = 8
    # layer 0: head 0 a strong sink (mean to key 0 = (1 + 7*0.5)/8 = 0.5625), head 1 uniform
    # (mean = H_8 / 8 = 0.3397), head 2 none (identity: mean 1/8), head 3 weak (0.25 + 0.75/8 = 0.34375)
    uniform_mean = sum(1 / (i + 1) for i in range(t)) / t
    assert 0.3 < uniform_mean < 0.35
    layer0 = torch.stack([sink_map(t, 0.5), causal_uniform(t), torch.eye(t), sink_map(t, 0.25)])
    # layer 1: all four heads attend only to themselves -> no sink, mean to key 0 = 1/8
    layer1 = torch.eye(t).expand(4, t, t).clone()
    maps = [layer0[None], layer1[None]]                               # [B=1, H=4, T, T] per layer
    # eps 0.3: heads (0,0), (0,1), (0,3) exceed -> 3 of 8 pairs
    assert sink_rate(maps, eps=0.3) == 3 / 8
    # eps 0.35: only (0,0)
    assert sink_rate(maps, eps=0.35) == 1 / 8
    assert sink_rate(torch.stack(maps), eps=0.2) == 3 / 8             # one tensor [L, B, H, T, T] works too
    # query 0 excluded: the strong sink keeps 0.5; the weak one drops to 0.25, uniform to
    # (H_8 - 1) / 7 = 0.245, identity to 0 -> 1 of 8
    assert sink_rate(maps, eps=0.3, include_first_query=False) == 1 / 8
    assert sink_rate(maps, eps=0.2, include_first_query=False) == 3 / 8
    # zeros in the causal part (36 entries per map): sink_map 7 rows x (i - 1) zeros for i>=2 = 21
    # uniform 0, identity 28 each (5 maps); the upper triangle never counts
    zeros = 21 + 0 + 28 + 21 + 4 * 28
    assert attention_sparsity(maps) == zeros / (8 * 36)
    assert attention_sparsity([torch.ones(2, 3, 5, 5)]) == 0.0
    # two sequences: the rate is over (sequence, layer, head)
    batch = [torch.stack([torch.stack([sink_map(t, 0.5)] * 2), torch.stack([torch.eye(t)] * 2)])]
    assert sink_rate(batch, eps=0.3) == 0.5


def test_chunked_stats_equal_full_maps_stats():
    torch.manual_seed(0)
    from qbench.attention import attention_weights, repeat_kv
    from qbench.diagnostics.collect import maps_attention_stats

    q, k = torch.randn(2, 4, 37, 16) * 2, torch.randn(2, 2, 37, 16) * 2
    for kind in ("softmax", "softpick"):
        full = attention_weights(q, repeat_kv(k, 4), kind)
        f_full, z_full = maps_attention_stats(full)
        for chunk in (1, 5, 37, 64):
            f, z = chunked_attention_stats(q, k, kind, chunk)
            torch.testing.assert_close(f, f_full, rtol=1e-6, atol=1e-9)
            assert torch.equal(z, z_full)


# --------------------------------------------------------------------------- kurtosis
def test_kurtosis_of_known_distributions():
    assert kurtosis(torch.tensor([-1.0, 1.0] * 50)) == pytest.approx(1.0)          # two points: exactly 1
    x = torch.tensor([0.0, 0.0, 0.0, 4.0], dtype=torch.float64)                     # Bernoulli(1/4): (1-3pq)/pq
    assert kurtosis(x) == pytest.approx((1 - 3 * 0.25 * 0.75) / (0.25 * 0.75))
    assert kurtosis(torch.linspace(-1, 1, 200001)) == pytest.approx(1.8, rel=1e-4)  # uniform: 9/5
    g = torch.Generator().manual_seed(0)
    assert kurtosis(torch.randn(2_000_000, generator=g)) == pytest.approx(3.0, abs=0.02)
    # streamed moments merge to the same value as the concatenation
    parts = [torch.randn(n, generator=g) * s + m for n, s, m in ((1000, 1.0, 0.0), (10, 50.0, 3.0), (5000, 0.1, -1.0))]
    merged = Moments.merge_all([Moments.of(p) for p in parts])
    assert merged.kurtosis == pytest.approx(kurtosis(parts), rel=1e-10)
    assert (merged.min, merged.max) == activation_extremes(parts)
    assert merged.n == 6010


# --------------------------------------------------------------------------- windows
def test_windows_start_at_documents_with_bos(tokenizer):
    docs = make_docs()
    ids, starts = sample_windows(tokenizer, docs, 8, 48, seed=3)
    assert ids.shape == (8, 48) and len(set(starts)) == 8
    assert (ids[:, 0] == tokenizer.bos_token_id).all()
    first = tokenizer(docs[starts[0]], add_special_tokens=False)["input_ids"][:47]
    assert ids[0, 1:1 + len(first)].tolist() == first
    again, _ = sample_windows(tokenizer, docs, 8, 48, seed=3)
    assert torch.equal(ids, again)
    other, _ = sample_windows(tokenizer, docs, 8, 48, seed=4)
    assert not torch.equal(ids, other)
    with pytest.raises(ValueError, match="at most"):   # DiagnosticsError is a ValueError
        sample_windows(tokenizer, docs[:4], 8, 48, seed=3)


# --------------------------------------------------------------------------- on a model
def test_chunked_path_equals_maps_path_on_a_model(tiny_pair, tokenizer):
    pair = load_pair(*tiny_pair)
    ids, _ = sample_windows(tokenizer, make_docs(), 6, 40, seed=0)
    for ckpt in pair:
        maps, path_a = collect(ckpt.model, ids, attention="maps", batch_size=3)
        chunked, path_b = collect(ckpt.model, ids, attention="chunked", chunk=7, batch_size=3)
        assert (path_a, path_b) == ("maps", "chunked")
        assert abs(maps.first - chunked.first).max() < 1e-6
        assert (maps.zeros == chunked.zeros).all()
        assert abs(maps.linear_max - chunked.linear_max).max() < 1e-4
        assert maps.linear_names == chunked.linear_names
    # softpick on a random model: about half the causal entries are exact zeros; softmax: none
    result = diagnose_pair(pair, make_docs(), samples=4, seq_len=32, subsamples=2)
    assert result["models"]["softmax"]["summary"]["sparsity"]["value"] == 0.0
    assert 20 < result["models"]["softpick"]["summary"]["sparsity"]["value"] < 80


def _cell(kind, model_hash, recipe, bits, errors):
    layers = [{"name": name, "shape": [64, 64], "module": "Linear", "weight_error": e, "bits_per_weight": bits + 0.5}
              for name, e in errors.items()]
    return {"key": f"{kind}-{recipe}-{bits}", "status": "done", "model": {"kind": kind, "hash": model_hash},
            "recipe": {"name": recipe, "method": recipe}, "bits": bits,
            "quant_report": {"recipe": recipe, "bits": bits, "weight_error": max(errors.values()), "layers": layers}}


def test_quant_errors_from_cells(tmp_path):
    cells = tmp_path / "cells"
    cells.mkdir()
    errs = {"model.layers.0.attn.q_proj": 0.3, "model.layers.0.mlp.down_proj": 0.4, "model.layers.1.attn.q_proj": 0.1}
    (cells / "a.json").write_text(json.dumps(_cell("softmax", "h1", "rtn", 4, errs)))
    (cells / "b.json").write_text(json.dumps(_cell("softpick", "other", "rtn", 4, errs)))
    (cells / "c.json").write_text(json.dumps({"status": "done", "model": {"kind": "softmax", "hash": "h1"},
                                              "recipe": None, "bits": None}))   # a baseline: no report
    out = read_quant_errors(tmp_path, {"softmax": "h1", "softpick": "h2"}, num_layers=3)
    assert [(r["model"], r["recipe"], r["bits"]) for r in out["rows"]] == [("softmax", "rtn", 4)]
    row = out["rows"][0]
    assert row["per_layer"][0] == pytest.approx(math.sqrt((0.09 + 0.16) / 2))
    assert row["per_layer"][1] == pytest.approx(0.1) and math.isnan(row["per_layer"][2])
    assert out["skipped"] == {"other_checkpoint": 1, "no_report": 1, "unreadable": 0}


def test_diagnose_cli_is_reproducible_and_writes_outputs(tiny_pair, tmp_path, capsys):
    text = write_heldout(tmp_path / "heldout.txt.gz", make_docs(30))
    pair = load_pair(*tiny_pair)
    results = tmp_path / "results"
    (results / "cells").mkdir(parents=True)
    errs = {f"model.layers.{i}.{m}": 0.1 * (i + 1) for i in range(2) for m in ("attn.q_proj", "mlp.down_proj")}
    for ckpt in pair:
        (results / "cells" / f"{ckpt.kind}.json").write_text(
            json.dumps(_cell(ckpt.kind, ckpt.content_hash, "rtn", 3, errs)))
    args = [*map(str, tiny_pair), "--text", str(text), "--samples", "8", "--seq-len", "48", "--subsamples", "4",
            "--seed", "5", "--results", str(results)]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "| softmax |" in printed and "| softpick |" in printed
    for name in ("diagnostics.md", "diagnostics.csv", "diagnostics.png", "diagnostics.json"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    for name in ("diagnostics.md", "diagnostics.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    a, b = (json.loads((tmp_path / d / "diagnostics.json").read_text()) for d in ("a", "b"))
    for r in (a, b):
        r.pop("seconds")
        for m in r["models"].values():
            m.pop("seconds")
    assert a == b
    md = (tmp_path / "a" / "diagnostics.md").read_text()
    assert "sink rate eps=0.2 / 0.3 (%)" in md and "Weight quantization error per layer" in md
    assert [r["model"] for r in a["quant_error"]["rows"]] == ["softmax", "softpick"]
    assert len(a["models"]["softpick"]["summary"]["kurtosis"]["subsamples"]) == 4


def test_diagnose_from_sweep_file_and_bad_input(tiny_pair, tmp_path, capsys):
    text = write_heldout(tmp_path / "heldout.txt", make_docs(10))
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: nosuchsweep\npair: {{softmax: {tiny_pair[0]}, softpick: {tiny_pair[1]}}}\n")
    assert main([str(sweep), "--text", str(text), "--samples", "4", "--seq-len", "16", "--subsamples", "2",
                 "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "diagnostics.md").exists()
    assert main([*map(str, tiny_pair), "--text", str(text), "--samples", "5", "--subsamples", "2",
                 "--out", str(tmp_path / "x")]) == 2
    assert "multiple" in capsys.readouterr().err
    assert main([*map(str, tiny_pair), "--text", str(tmp_path / "missing.gz"), "--out", str(tmp_path / "x")]) == 2


def test_diagnose_refuses_before_any_work(tiny_pair, tmp_path, capsys, monkeypatch):
    import qbench.model

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(qbench.model, "load_model", no_loading)
    text = write_heldout(tmp_path / "heldout.txt", make_docs(10))
    base = [*map(str, tiny_pair), "--text", str(text), "--samples", "4", "--subsamples", "2"]
    assert main(base + ["--seq-len", "300", "--out", str(tmp_path / "o")]) == 2
    assert "--seq-len 300 is past the 256 positions of softmax" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("x")
    assert main(base + ["--seq-len", "16", "--out", str(tmp_path / "a-file")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert main(base + ["--seq-len", "16", "--attention", "softpick,softmax,softmax"]) == 2
    assert "one per checkpoint (2)" in capsys.readouterr().err
    assert main(base + ["--seq-len", "16", "--results", str(tmp_path / "no-results")]) == 2
    assert capsys.readouterr().err == f"qbench diagnose: error: results folder not found: {tmp_path / 'no-results'} (--results)\n"
    assert not (tmp_path / "o").exists() and not (tmp_path / "no-results").exists()


def test_diagnose_any_number_of_arms_with_forced_kinds(tiny_pair, tmp_path):
    """Three arms from one checkpoint (its own softmax, forced softpick, forced softmax1): the
    forced softpick arm gives exactly the numbers of the softpick checkpoint (same weights)."""
    text = write_heldout(tmp_path / "heldout.txt", make_docs(12))
    common = ["--text", str(text), "--samples", "4", "--seq-len", "24", "--subsamples", "2"]
    softmax = str(tiny_pair[0])
    assert main([softmax, softmax, softmax, "--attention", "own,softpick,softmax1", *common,
                 "--out", str(tmp_path / "arms")]) == 0
    arms = json.loads((tmp_path / "arms" / "diagnostics.json").read_text())
    assert list(arms["models"]) == ["softmax", "softmax (softpick)", "softmax (softmax1)"]
    assert [m["attention"] for m in arms["models"].values()] == ["softmax", "softpick", "softmax1"]
    assert main([str(tiny_pair[1]), *common, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "diagnostics.json").read_text())
    assert arms["models"]["softmax (softpick)"]["summary"] == one["models"]["softpick"]["summary"]
    md = (tmp_path / "arms" / "diagnostics.md").read_text()
    assert "| softmax (softmax1) |" in md and "## Per layer (softmax / softmax (softpick) / softmax (softmax1))" in md


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_chunked_path_equals_maps_path_on_transformers_models(tmp_path, tokenizer, arch):
    """transformers' own models (Gemma3 with a sliding window shorter than the windows)."""
    from test_hf_attention import CONFIGS, save_hf

    from qbench.model import load_model

    ckpt = load_model(save_hf(tmp_path / arch, CONFIGS[arch](), tokenizer), attention="softpick")
    ids, _ = sample_windows(tokenizer, make_docs(), 4, 20, seed=0)
    maps, _ = collect(ckpt.model, ids, attention="maps", batch_size=2)
    chunked, _ = collect(ckpt.model, ids, attention="chunked", chunk=6, batch_size=2)
    assert abs(maps.first - chunked.first).max() < 1e-6
    assert (maps.zeros == chunked.zeros).all() and maps.zeros.sum() > 0
    assert maps.linear_names == chunked.linear_names and maps.linear_names[0] == "model.layers.0.self_attn.q_proj"
    assert abs(maps.hidden - chunked.hidden).max() < 1e-3
