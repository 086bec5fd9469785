"""Data-parallel training (torchrun, DistributedDataParallel): two gloo processes on the CPU give
the weights of one process on the same global batch; a pair's arms on disjoint GPU sets; the
speed options and --measure-steps; one GPU (skipped without CUDA)."""
import json

import numpy as np
import pytest
import torch

from conftest import make_tokenizer
from qbench.train import data as D
from qbench.train import launch as L
from qbench.train import train as T
from qbench.train.commands import format_measurement
from qbench.train.start import fresh_model
from train_fixtures import make_corpus, read_log, spec

STEPS = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_two_gloo_processes_equal_one_process(corpus, tmp_path):
    """torchrun --nproc-per-node 2 (gloo): each rank trains on half of every global batch of 8;
    after 4 steps the weights equal those of one process on the whole batch, up to float order."""
    one = tmp_path / "one"
    single = T.train_one(spec(corpus, one, "softpick", steps=STEPS, evaluate=False))
    two = tmp_path / "two"
    summary = L.train_distributed(spec(corpus, two, "softpick", steps=STEPS, evaluate=False, nproc=2))
    assert summary["distributed"] == {"world_size": 2, "backend": "gloo", "sequences_per_rank": 4, "micro_batch": 4,
                                      "accumulation_steps": 1, "launcher": "torchrun"}
    assert summary["init_hash"] == single["init_hash"]
    assert summary["data_order_hash"] == single["data_order_hash"]          # the same global batches
    assert [r["batch_hash"] for r in read_log(two)] == [r["batch_hash"] for r in read_log(one)]
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys()
    init = fresh_model(T.resolve_preset("debug"), "softpick", 0, make_tokenizer()).state_dict()
    differ = max(float((a[k] - b[k]).abs().max()) for k in a)
    trained = max(float((a[k] - init[k]).abs().max()) for k in a)
    assert differ < 1e-5 and trained > 1e-3, (differ, trained)             # equal, and not just the init
    losses = [[float(r["loss"]) for r in read_log(folder)] for folder in (one, two)]
    assert np.allclose(losses[0], losses[1], rtol=1e-4)                     # the logged loss is the global mean
    assert "softpick: 4 steps" in (two / "softpick.log").read_text()      # rank 0's report, once
    assert (two / "softpick.log").read_text().count("softpick: 4 steps") == 1


def test_gradient_accumulation_equals_one_batch(corpus, tmp_path):
    """--micro-batch 2: four forward/backward passes per step give the step of one pass of 8."""
    whole = T.train_one(spec(corpus, tmp_path / "whole", steps=STEPS, evaluate=False))
    parts = T.train_one(spec(corpus, tmp_path / "parts", steps=STEPS, evaluate=False, micro_batch=2))
    assert parts["distributed"]["accumulation_steps"] == 4 and parts["preset_values"]["micro_batch"] == 2
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "parts")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    assert whole["data_order_hash"] == parts["data_order_hash"]


def test_batch_must_split_over_processes_and_micro_batches(corpus, tmp_path):
    with pytest.raises(T.TrainError, match="does not split over 3 processes"):
        T.check_spec(spec(corpus, tmp_path, nproc=3))
    with pytest.raises(T.TrainError, match="micro-batches of 3"):
        T.check_spec(spec(corpus, tmp_path, micro_batch=3))


def test_arms_get_disjoint_gpu_sets(monkeypatch):
    """4 + 4 on eight visible GPUs, 1 + 1 on two; sequential arms reuse the first N; too few is an error."""
    monkeypatch.setattr(L, "_cuda_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    envs = L.arm_envs(2, 4, "auto", concurrent=True)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0,1,2,3", "4,5,6,7"]
    assert all(e["NCCL_NVLS_ENABLE"] == "0" for e in envs)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in L.arm_envs(2, 4, "cuda", concurrent=False)] == ["0,1,2,3"] * 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert [e["CUDA_VISIBLE_DEVICES"] for e in L.arm_envs(2, 1, "auto", concurrent=True)] == ["3", "5"]
    with pytest.raises(T.TrainError, match="needs 4 GPUs, 2 visible; pass --sequential"):
        L.arm_envs(2, 2, "auto", concurrent=True)
    with pytest.raises(T.TrainError, match="only 2 GPU"):
        L.arm_envs(2, 3, "auto", concurrent=False)


def test_torchrun_command_line(corpus, tmp_path):
    inputs = T.Inputs(corpus / "train.tokens.u16", corpus / "tokenizer", None)
    argv = L._child_argv(spec(corpus, tmp_path, "softmax", nproc=4, micro_batch=2, precision="bf16",
                              optimizer_impl="fused", compile=True), inputs, "softmax", tmp_path)
    assert argv[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert argv[5:7] == ["-m", "qbench.train.train"]
    for flag in ("--processes 4", "--micro-batch 2", "--precision bf16", "--optimizer-impl fused", "--no-eval"):
        assert flag in " ".join(argv), flag
    assert "--compile" in argv


def test_measure_steps_saves_nothing_but_the_measurement(corpus, tmp_path):
    out = tmp_path / "m"
    m = T.train_one(spec(corpus, out, "softpick", measure_steps=6))
    assert m["steps_timed"] == 5 and m["warmup_steps_untimed"] == 1 and m["tokens_per_second"] > 0
    assert m["preset_tokens"] == 20 * 8 * 64
    assert m["preset_minutes"] == pytest.approx(m["preset_tokens"] / m["tokens_per_second"] / 60, abs=0.06)
    assert m["tokens_in_30_minutes"] == pytest.approx(m["tokens_per_second"] * 1800, rel=1e-3)
    assert sorted(p.name for p in out.iterdir()) == ["measure_softpick.json"]
    assert format_measurement(m).startswith("debug softpick: ")
    assert T.train_one(spec(corpus, None, "softmax", measure_steps=3))["steps_timed"] == 2   # no folder needed


def test_bf16_weights_and_optimizer_choices_are_recorded(corpus, tmp_path):
    summary = T.train_one(spec(corpus, tmp_path / "b", steps=6, precision="bf16", optimizer_impl="foreach"))
    assert summary["precision_mode"] == "bf16" and summary["precision"].startswith("bf16 weights")
    assert summary["optimizer_impl"] == "foreach" and summary["compile"] is False
    losses = [float(r["loss"]) for r in read_log(tmp_path / "b")]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    other = T.train_one(spec(corpus, tmp_path / "c", steps=6, optimizer_impl="for-loop"))
    assert other["recipe_hash"] != summary["recipe_hash"]      # a pair of the two would be refused


def test_uint32_token_files(tmp_path):
    ids = np.array([1, 70000, 2, 65535], dtype=np.int64)
    D.save_tokens(tmp_path / "wide.npy", ids, vocab_size=70001)
    wide = D.load_tokens(tmp_path / "wide.npy")
    assert wide.dtype == np.uint32 and wide.tolist() == ids.tolist()
    D.save_tokens(tmp_path / "narrow.npy", ids[[0, 2, 3]], vocab_size=65536)
    assert D.load_tokens(tmp_path / "narrow.npy").dtype == np.uint16
    with pytest.raises(T.TrainError, match="outside"):
        D.save_tokens(tmp_path / "bad.npy", ids, vocab_size=65536)
    small = np.array([[1, 2, 3]])
    assert D.batch_hash(small) == D.batch_hash(small.astype(np.uint16))    # the uint16-era hashes
    assert D.batch_hash(np.array([[1, 70000]])) != D.batch_hash(np.array([[1, 70000 - 65536]]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_one_gpu_speed_options_and_measurement(corpus, tmp_path):
    """On one GPU: the default recipe (bf16 autocast, fused AdamW), bf16 weights with compile, and
    --measure-steps; the softpick kernel runs forward and backward."""
    base = T.train_one(spec(corpus, tmp_path / "auto", "softpick", steps=10, device="cuda"))
    assert base["precision_mode"] == "bf16-autocast" and base["optimizer_impl"] == "fused"
    assert base["attention_backend"].startswith("triton kernel")
    fast = T.train_one(spec(corpus, tmp_path / "fast", "softpick", steps=10, device="cuda", precision="bf16",
                            compile=True))
    assert fast["compile"] and "mlp" in fast["compiled_parts"]
    for folder in ("auto", "fast"):
        losses = [float(r["loss"]) for r in read_log(tmp_path / folder)]
        assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    m = T.train_one(spec(corpus, None, "softmax", device="cuda", measure_steps=8))
    assert m["tokens_per_second"] > 0 and m["peak_memory_gib"] is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_one_gpu_ddp_under_torchrun(corpus, tmp_path):
    """torchrun with one process on one GPU joins an NCCL group and trains through DDP; in fp32 it
    gives the plain process's data order and weights (up to GPU float noise)."""
    import subprocess
    import sys

    plain = T.train_one(spec(corpus, tmp_path / "plain", steps=STEPS, device="cuda", precision="fp32", evaluate=False))
    run = spec(corpus, tmp_path / "ddp", steps=STEPS, device="cuda", precision="fp32", evaluate=False)
    argv = L._child_argv(run, T.Inputs(corpus / "train.tokens.u16", corpus / "tokenizer", None), "softmax",
                         tmp_path / "ddp")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
                           "-m", *argv[2:]], capture_output=True, text=True, cwd=L.SOURCE_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / T.SUMMARY_FILE).read_text())
    assert summary["distributed"]["backend"] == "nccl" and summary["distributed"]["world_size"] == 1
    assert summary["data_order_hash"] == plain["data_order_hash"] and summary["init_hash"] == plain["init_hash"]
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "ddp")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3
