"""qbench.quant on CUDA (skipped without it): every recipe at every width (and every activation /
KV width a sweep varies as an axis) on a small bf16 model, for both attention kinds, and every
method on a paper-size (340M-shaped) model (its time printed, not asserted).

Run `python tests/test_quant_gpu.py` on a GPU machine to print a JSON timing table.
"""
import json
import time

import pytest
import torch

from qbench.model import new_model
from qbench.quant import MethodUnavailable, quantize
from quant_cases import case_id, cases, recipe_at

HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")]

SMALL = dict(hidden_size=256, num_hidden_layers=2, num_heads=4, num_kv_heads=4, vocab_size=512,
             max_position_embeddings=512)
PAPER_340M = dict(hidden_size=1024, num_hidden_layers=24, num_heads=16, vocab_size=32000,
                  max_position_embeddings=4096)


def _calib(recipe, vocab, samples=None, seq_len=None):
    if recipe.calib is None:
        return recipe, None
    c = {"samples": samples or recipe.calib["samples"], "seq_len": seq_len or recipe.calib["seq_len"],
         "seed": 0}
    recipe = recipe.replace(calib=c)
    g = torch.Generator().manual_seed(0)
    return recipe, torch.randint(0, vocab, (c["samples"], c["seq_len"]), generator=g)


def _run(config, name, bits, kind="softmax", samples=None, seq_len=None, dtype=torch.bfloat16, axes=None):
    model = new_model(kind, seed=0, **config).to("cuda", dtype)
    recipe, calib = _calib(recipe_at(name, axes or {}), config["vocab_size"], samples, seq_len)
    ids = torch.randint(0, config["vocab_size"], (2, 128), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        ref = model(ids).logits.float()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    report = quantize(model, recipe, bits, calib)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        out = model(ids).logits.float()
    assert torch.isfinite(out).all()
    return report, float((out - ref).norm() / ref.norm()), seconds


CELLS = cases()


def _run_or_skip(*args, **kwargs):
    """_run, skipped where the method's library is not installed (e.g. bitsandbytes on a host
    that lacks it: an H200 stay that did not carry its wheel)."""
    try:
        return _run(*args, **kwargs)
    except MethodUnavailable as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("kind", ["softmax", "softpick"])
@pytest.mark.parametrize("name,bits,axes", CELLS, ids=[case_id(*c) for c in CELLS])
def test_every_recipe_on_cuda(name, bits, axes, kind):
    report, diff, _ = _run_or_skip(SMALL, name, bits, kind=kind, samples=16, seq_len=128, axes=axes)
    recipe = recipe_at(name, axes)
    assert diff > 1e-4
    if recipe.method is not None:
        assert report.layers_quantized == 14
        assert all(lr.weight_error > 1e-6 for lr in report.layers)
    if recipe.transform is not None:
        assert report.extra["transform"]["logit_change"] < 0.05   # bf16 rounding of the rotated weights
    if recipe.activation is not None:
        assert report.extra["activation"]["error"] > 0
    if recipe.kv_cache is not None:
        kv = report.extra["kv_cache"]
        assert kv["k_error"] > 0 and kv["v_error"] > 0
        # K and V are quantized before the path is chosen: softpick keeps its kernel
        expected = "softmax:sdpa" if kind == "softmax" else "softpick:triton:"   # + the kernel configs
        assert len(kv["backends"]) == 1 and kv["backends"][0].startswith(expected)
    if recipe.attention is not None:
        assert report.extra["attention"]["backends"] == [f"{kind}:maps"]


@pytest.mark.slow
@pytest.mark.parametrize("name,bits", [("rtn", 4), ("hqq", 4), ("gptq", 4), ("bnb", 4), ("bnb", 8),
                                       ("quanto", 4), ("w4a-rtn", 4), ("quanto-w8a8", 8), ("w4a-rtn-sq", 4),
                                       ("w4a-rtn-rot", 4), ("mxfp4", 4), ("nvfp4", 4), ("fp8", 8)])
def test_paper_size_model_quantizes_every_layer(name, bits):
    """The shipped recipe (gptq and quanto-w8a8 with their full 128 x 512 calibration batch) on a
    340M-shaped model; the time is printed (timings belong to `qbench bench paper-scale`)."""
    report, diff, seconds = _run_or_skip(PAPER_340M, name, bits)
    print(f"\n{name} {bits}-bit on a 340M-shaped model: {seconds:.1f}s, {report.summary()}, logit diff {diff:.3g}")
    assert report.layers_quantized == 24 * 7


if __name__ == "__main__":
    rows = []
    for name, bits, axes in cases():
        try:
            report, diff, seconds = _run(PAPER_340M, name, bits, axes=axes)
            rows.append({"recipe": name, "bits": bits, **axes, "label": report.label, "seconds": round(seconds, 2),
                         "logit_diff": diff, "weight_error": report.weight_error,
                         "bits_per_weight": report.bits_per_weight})
        except Exception as e:  # report, keep going
            rows.append({"recipe": name, "bits": bits, **axes, "error": f"{type(e).__name__}: {e}"})
        print(json.dumps(rows[-1]), flush=True)
        torch.cuda.empty_cache()
