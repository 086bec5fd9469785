"""qbench.quant: every recipe at every width it supports acts on a tiny random model, errors
grow as bits shrink, and a quantizer that does nothing is an error, never a result."""
import copy
import functools
import json

import pytest
import torch

from qbench.model import new_model
from qbench.quant import (MethodUnavailable, QuantizerDidNothing, available_recipes, get_method,
                          load_recipe, methods, quantize)

TINY = dict(hidden_size=128, num_hidden_layers=2, num_heads=4, num_kv_heads=2, vocab_size=256,
            max_position_embeddings=128)   # MLP 512 wide: every recipe's group size divides
CALIB = {"samples": 8, "seq_len": 32, "seed": 0}
N_LINEAR_IN_BLOCKS = 14  # 2 blocks x (q, k, v, o, gate, up, down)


@functools.lru_cache(maxsize=None)
def base_model():
    return new_model("softmax", seed=0, **TINY)


@functools.lru_cache(maxsize=None)
def inputs():
    g = torch.Generator().manual_seed(123)
    ids = torch.randint(0, TINY["vocab_size"], (2, 32), generator=g)
    calib = torch.randint(0, TINY["vocab_size"], (CALIB["samples"], CALIB["seq_len"]), generator=g)
    with torch.no_grad():
        ref = base_model()(ids).logits
    return ids, calib, ref


def recipe_for_tests(name):
    """The recipe as shipped, with a small calibration batch where it calibrates."""
    r = load_recipe(name)
    return r.replace(calib=dict(CALIB)) if r.calib is not None else r


@functools.lru_cache(maxsize=None)
def run(name, bits):
    """(report, relative logit difference, quantized model) or the MethodUnavailable."""
    ids, calib, ref = inputs()
    model = copy.deepcopy(base_model())
    r = recipe_for_tests(name)
    try:
        report = quantize(model, r, bits, calib if r.calib is not None else None)
    except MethodUnavailable as e:
        return e
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    return report, float((logits - ref).norm() / ref.norm()), model


def get(name, bits):
    out = run(name, bits)
    if isinstance(out, MethodUnavailable):
        pytest.skip(f"{name}: {out}")
    return out


CELLS = [(n, b) for n in available_recipes() for b in load_recipe(n).bits]


def test_recipes_cover_every_method_and_the_paper_grid():
    by_method = {}
    for n in available_recipes():
        r = load_recipe(n)
        by_method.setdefault(r.method, set()).update(r.bits)
    assert set(by_method) == set(methods())   # every registered method ships a recipe
    assert set(methods()) >= {"rtn", "hqq", "gptq", "bnb", "quanto", "act"}
    assert {8, 4, 3, 2} <= by_method["hqq"] and {8, 4, 3, 2} <= by_method["gptq"]
    assert {8, 4} <= by_method["bnb"]
    assert {"w8a8-rtn", "w4a8-rtn", "w4a4-rtn"} <= set(available_recipes())


@pytest.mark.parametrize("name,bits", CELLS, ids=[f"{n}-{b}bit" for n, b in CELLS])
def test_recipe_quantizes_and_model_runs(name, bits):
    report, logit_diff, model = get(name, bits)
    assert logit_diff > 1e-4, "logits equal full precision"
    assert report.layers_quantized == N_LINEAR_IN_BLOCKS
    assert report.linear_layers_total == N_LINEAR_IN_BLOCKS + 1
    assert report.skipped == ["lm_head"]
    assert all(lr.weight_error > 1e-6 for lr in report.layers)
    assert bits <= report.bits_per_weight <= bits + 1.5, report.bits_per_weight
    assert 0 < report.weight_error < 1.5
    # lm_head and embeddings untouched
    base = base_model()
    assert torch.equal(model.lm_head.weight, base.lm_head.weight)
    assert torch.equal(model.model.embeddings.weight, base.model.embeddings.weight)
    d = report.to_dict()
    json.dumps(d)
    assert d["method"] == load_recipe(name).method and d["bits"] == bits and len(d["layers"]) == 14


MULTI = [n for n in available_recipes() if len(load_recipe(n).bits) > 1]


@pytest.mark.parametrize("name", MULTI)
def test_error_grows_as_bits_shrink(name):
    widths = sorted(load_recipe(name).bits, reverse=True)
    results = [get(name, b) for b in widths]
    w_err = [r[0].weight_error for r in results]
    l_err = [r[1] for r in results]
    assert all(a < b for a, b in zip(w_err, w_err[1:])), dict(zip(widths, w_err))
    assert all(a < b for a, b in zip(l_err, l_err[1:])), dict(zip(widths, l_err))


def test_activation_error_grows_as_activation_bits_shrink():
    lw8a8, lw4a8, lw4a4, lw8a4 = (get(n, b)[1] for n, b in
                                  [("w8a8-rtn", 8), ("w4a8-rtn", 4), ("w4a4-rtn", 4), ("w8a4-rtn", 8)])
    assert lw8a8 < lw4a8 < lw4a4
    assert lw8a8 < lw8a4
    a8 = get("w8a8-rtn", 8)[0].extra["activation"]
    a4 = get("w8a4-rtn", 8)[0].extra["activation"]
    assert 0 < a8["error"] < a4["error"]
    assert set(a8["layers"]) == {lr.name for lr in get("w8a8-rtn", 8)[0].layers}
    # same weights (per-channel symmetric 8-bit RTN): only the activations differ
    assert get("w8a8-rtn", 8)[0].weight_error == pytest.approx(get("w8a4-rtn", 8)[0].weight_error)


def test_weight_methods_comparable_at_4_bits():
    """Sanity across libraries: every 4-bit weight-only method lands in the same range."""
    errs = {}
    for name in ("rtn", "hqq", "gptq", "bnb", "quanto"):
        out = run(name, 4)
        if not isinstance(out, MethodUnavailable):
            errs[name] = out[0].weight_error
    assert all(0.03 < e < 0.3 for e in errs.values()), errs


def test_quanto_activations_calibrated():
    report = get("quanto-w8a8", 8)[0]
    scales = report.extra["activation"]["static_input_scales"]
    assert len(scales) == 14 and all(s != 1.0 and s > 0 for s in scales.values())
    w_only = get("quanto", 8)
    assert get("quanto-w8a8", 8)[1] > w_only[1]   # activations add error on top of the weights


# ----------------------------------------------------------------------- quantizers that do nothing
def test_recipe_selecting_no_layer_raises(tmp_path):
    p = tmp_path / "nolayers.yaml"
    p.write_text("name: nolayers\nmethod: rtn\nbits: [4]\nweight: {group_size: 64, symmetric: false}\n"
                 "layers: {include: ['*nothing*'], exclude: []}\n")
    with pytest.raises(QuantizerDidNothing, match="layers"):
        quantize(copy.deepcopy(base_model()), str(p), 4)


def test_method_returning_weights_unchanged_raises(monkeypatch):
    rtn = get_method("rtn")
    monkeypatch.setattr(type(rtn), "quantize_layer", lambda self, linear, recipe, bits: linear)
    with pytest.raises(QuantizerDidNothing, match="unchanged"):
        quantize(copy.deepcopy(base_model()), "rtn", 4)


def test_one_layer_left_unchanged_raises(monkeypatch):
    rtn = get_method("rtn")
    orig = type(rtn).quantize_layer
    state = {"n": 0}

    def skip_third(self, linear, recipe, bits):
        state["n"] += 1
        return linear if state["n"] == 3 else orig(self, linear, recipe, bits)

    monkeypatch.setattr(type(rtn), "quantize_layer", skip_third)
    with pytest.raises(QuantizerDidNothing, match="1 of 14"):
        quantize(copy.deepcopy(base_model()), "rtn", 4)


def test_activation_quantizer_doing_nothing_raises(monkeypatch):
    import qbench.quant.act as act

    monkeypatch.setattr(act, "fake_quant_act", lambda x, *a, **k: x)
    with pytest.raises(QuantizerDidNothing, match="activation"):
        quantize(copy.deepcopy(base_model()), "w8a8-rtn", 8)


def test_quantizing_twice_with_a_library_method_raises():
    model = copy.deepcopy(base_model())
    try:
        quantize(model, "hqq", 4)
    except MethodUnavailable as e:
        pytest.skip(str(e))
    with pytest.raises(QuantizerDidNothing):   # no full-precision linear layer is left
        quantize(model, "hqq", 4)


# ----------------------------------------------------------------------- versions, availability
def test_versions_for_cell_keys():
    from importlib.metadata import version

    from qbench.quant import code_versions, library_versions

    assert library_versions("rtn") == {}
    assert library_versions("hqq") == {"hqq": version("hqq")}
    assert library_versions("bnb") == {"bitsandbytes": version("bitsandbytes")}
    assert library_versions("quanto") == {"optimum-quanto": version("optimum-quanto")}
    assert library_versions("w4a8-gptq") == {}
    cv = code_versions("w4a8-gptq")
    assert set(cv) == {"core", "act", "gptq"}
    assert get("rtn", 4)[0].code_versions == code_versions("rtn")


def test_method_without_a_path_on_the_device_says_so():
    with pytest.raises(MethodUnavailable, match="bnb"):
        get_method("bnb").check_available(load_recipe("bnb"), torch.device("mps"))
