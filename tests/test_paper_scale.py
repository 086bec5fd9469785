"""Random paper-size models (qbench/bench/models.py), `qbench bench model`, and every step of
qbench/bench/paper_scale.py in its --tiny mode (CPU; the kernels in the Triton interpreter)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_paper_sizes_have_the_papers_shapes_and_parameter_counts():
    from qbench.bench import models as bench_models

    counts = {}
    for size in ("340M", "1.8B"):
        model = bench_models.random_model(size, "softpick", device="meta")   # no memory, no init cost
        c = model.config
        assert (c.vocab_size, c.max_position_embeddings, c.tie_word_embeddings, c.kv_heads) == \
            (32000, 4096, False, c.num_heads)
        assert c.attention_kind == "softpick" and c.head_dim == 64
        counts[size] = bench_models.parameter_count(model)
    assert 0.35e9 < counts["340M"] < 0.40e9 and 1.7e9 < counts["1.8B"] < 1.9e9, counts
    c = bench_models.random_model("1.8B", device="meta", layers=2).config
    assert (c.hidden_size, c.num_heads, c.num_hidden_layers, c.mlp_size) == (2048, 32, 2, 5632)


def test_random_specs():
    from qbench.bench import models as bench_models

    assert bench_models.parse_spec("random:340M") == ("340M", "softmax")
    assert bench_models.parse_spec("random:1.8B:softpick") == ("1.8B", "softpick")
    assert bench_models.parse_spec("checkpoints/tiny/softmax") is None
    for bad in ("random:3B", "random:340M:linear", "random:340M:softmax:x"):
        with pytest.raises(bench_models.BenchModelError, match="random:SIZE"):
            bench_models.parse_spec(bad)
    model, tokenizer, ident = bench_models.load_spec("random:tiny:softpick")
    assert model.config.attention_kind == "softpick" and ident == "random-tiny-seed0"
    assert max(tokenizer("a b c")["input_ids"]) < model.config.vocab_size
    a, b = bench_models.random_model("tiny", "softmax"), bench_models.random_model("tiny", "softpick")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))  # a pair


def test_bench_model_command_saves_a_loadable_pair(tmp_path, capsys):
    from qbench.cli import main
    from qbench.model import check_pair, load_checkpoint

    rc = main(["bench", "model", "--size", "tiny", "--device", "cpu", "--dtype", "float32", "--seq-len", "16",
               "--repeats", "1", "--save", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc in (0, None) and "softmax" in out and "softpick" in out and "tokens/s" in out
    check_pair(tmp_path / "softmax", tmp_path / "softpick")
    ckpt = load_checkpoint(tmp_path / "softpick")
    assert ckpt.model.config.num_hidden_layers == 2


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_paper_scale_tiny_runs_every_step(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TRITON_INTERPRET": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "qbench.bench.paper_scale", "--tiny", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads((tmp_path / "paper-scale.json").read_text())["results"]
    assert set(results) == {"kernel", "gptq", "eval", "cell"}
    assert not [step for step, r in results.items() if "error" in r]
    k = results["kernel"]
    assert k["same_bits_twice"] is True
    assert {r["kernel"] for r in k["candidates"]} == {"fwd", "dkdv", "dq"}
    assert all(r["accurate"] for r in k["candidates"]), k["candidates"]
    assert any("tma" in r["config"] for r in k["candidates"])
    assert results["gptq"]["layers_quantized"] == 14 and results["gptq"]["extrapolated"] > 0
    assert results["eval"]["max_metric_difference"] < 1e-4
    assert set(results["eval"]["answer_flips_vs_hf"].values()) == {0}   # float32: the same answers as HFLM
    assert results["eval"]["scorer_stats"]["shared_context_rows"] > 0
    assert set(results["cell"]["timing"]) == {"load", "copy", "calibration_batch", "quantize", "evaluate"}
    md = (tmp_path / "paper-scale.md").read_text()
    assert "| kernel fwd, table, ours/SDPA-default" in md and "GPTQ 4-bit tiny" in md
    last = proc.stdout.strip().splitlines()
    assert last[-1].startswith("| one cell tiny"), last[-12:]   # the short table comes last


def test_module_subcommands_pass_every_argument_to_the_module(capsys):
    """`qbench bench attention --compile-only ...`: options go to qbench.bench.attention.main, not to
    qbench's parser; its errors come through qbench's one error line."""
    from qbench.cli import build_parser, main

    args = build_parser().parse_args(["bench", "paper-scale", "--tiny", "--out", "x", "--steps", "gptq"])
    assert args.module_args == ["--tiny", "--out", "x", "--steps", "gptq"]
    args = build_parser().parse_args(["bench", "attention", "--help"])
    assert args.module_args == ["--help"]
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "compare-stores", "--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("usage: qbench bench compare-stores ")
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "paper-scale", "--out", "x", "--steps", "gptq,nope"])
    assert exit_.value.code == 2 and "qbench bench paper-scale: error: unknown steps ['nope']" in capsys.readouterr().err
    assert main(["bench", "paper-scale", "--out", "x", "--tiny", "--eval-size", "7B"]) == 2
    assert "--eval-size 7B: expected one of ['1.8B', '340M']" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "attention", "--quick"]) == 2
        assert capsys.readouterr().err == "qbench bench attention: error: needs a CUDA device (--compile-only needs none)\n"
