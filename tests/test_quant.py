"""qbench.quant: every recipe at every width it supports (and every activation / KV width a
sweep varies as an axis) acts on a tiny random model, errors grow as bits shrink, and a
quantizer that does nothing is an error, never a result."""
import copy
import functools
import json

import pytest
import torch

from qbench.model import new_model
from qbench.quant import (MethodUnavailable, QuantizerDidNothing, available_recipes, get_method,
                          load_recipe, methods, quantize)
from quant_cases import case_id, cases, recipe_at

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


def recipe_for_tests(name, axes=()):
    """The recipe as shipped (at the given sweep axes), with a small calibration batch where it
    calibrates."""
    r = recipe_at(name, dict(axes))
    return r.replace(calib=dict(CALIB)) if r.calib is not None else r


@functools.lru_cache(maxsize=None)
def run(name, bits, axes=()):
    """(report, relative logit difference, quantized model) or the MethodUnavailable."""
    ids, calib, ref = inputs()
    model = copy.deepcopy(base_model())
    r = recipe_for_tests(name, axes)
    try:
        report = quantize(model, r, bits, calib if r.calib is not None else None)
    except MethodUnavailable as e:
        return e
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    return report, float((logits - ref).norm() / ref.norm()), model


def get(name, bits, **axes):
    out = run(name, bits, tuple(sorted(axes.items())))
    if isinstance(out, MethodUnavailable):
        pytest.skip(f"{name}: {out}")
    return out


CELLS = cases()


def bits_per_weight_bounds(recipe, bits, in_features=128, out_features=128):
    """What a recipe's storage can cost per weight: the width packed into 32-bit words (3-bit:
    10 per word, 3.2 bits), at most a 32-bit scale and a 32-bit zero per group (the method's
    group size; bnb's block; else a whole row of the narrowest layer), and at most one 32-bit
    index per input column (gptq act_order)."""
    g = get_method(recipe.method).group_size(recipe, bits) or recipe.weight.get("blocksize") or in_features
    packed = 32 / (32 // bits)
    return bits, packed + 2 * 32 / g + 32 / out_features


def test_recipes_cover_every_method_and_the_paper_grid():
    by_method = {}
    for n in available_recipes():
        r = load_recipe(n)
        by_method.setdefault(r.method, set()).update(r.bits)
    assert set(by_method) - {None} == set(methods())   # every registered method ships a recipe
    assert set(methods()) >= {"rtn", "hqq", "gptq", "bnb", "quanto", "fp8", "mxfp4", "nvfp4"}
    assert {8, 4, 3, 2} <= by_method["hqq"] and {8, 4, 3, 2} <= by_method["gptq"]
    assert {8, 4} <= by_method["bnb"]
    assert {"w8a-rtn", "w4a-rtn", "w4a-gptq", "kv", "kv-sink", "kv-kivi", "attn-p8", "attn-p4",
            "w4a-rtn-sq", "w4a-rtn-rot", "fp8", "mxfp4", "nvfp4"} <= set(available_recipes())


@pytest.mark.parametrize("name,bits,axes", CELLS, ids=[case_id(*c) for c in CELLS])
def test_recipe_quantizes_and_model_runs(name, bits, axes):
    report, logit_diff, model = get(name, bits, **axes)
    recipe = recipe_at(name, axes)
    assert logit_diff > 1e-4, "logits equal full precision"
    assert report.linear_layers_total == N_LINEAR_IN_BLOCKS + 1
    if recipe.method is not None:
        assert report.layers_quantized == N_LINEAR_IN_BLOCKS
        assert report.skipped == ["lm_head"]
        assert all(lr.weight_error > 1e-6 for lr in report.layers)
        lo, hi = bits_per_weight_bounds(recipe, bits)
        assert lo <= report.bits_per_weight <= hi, (report.bits_per_weight, hi)
        assert 0 < report.weight_error < 1.5
    else:
        assert report.layers_quantized == 0 and report.weight_error is None and report.bits is None
    if recipe.transform is None:   # lm_head and embeddings untouched (a rotation rotates them)
        base = base_model()
        assert torch.equal(model.lm_head.weight, base.lm_head.weight)
        assert torch.equal(model.model.embeddings.weight, base.model.embeddings.weight)
    else:
        assert report.extra["transform"]["logit_change"] < 1e-5   # full precision unchanged
    # every run-time quantizer proved it acted, layer by layer
    if recipe.activation is not None:
        act = report.extra["activation"]
        assert act["error"] > 0 and len(act["layers"]) == N_LINEAR_IN_BLOCKS
    if recipe.kv_cache is not None:
        kv = report.extra["kv_cache"]
        assert kv["k_error"] > 0 and kv["v_error"] > 0 and len(kv["layers"]) == TINY["num_hidden_layers"]
    if recipe.attention is not None:
        at = report.extra["attention"]
        assert at["backends"] == ["softmax:maps"]
        assert all(at[f"{t}_error"] > 0 for t in ("scores", "probs") if getattr(recipe.attention, f"{t}_bits"))
    d = report.to_dict()
    json.dumps(d)
    assert d["method"] == recipe.method and d["bits"] == bits and d["label"] == recipe.label(bits)
    assert len(d["layers"]) == (14 if recipe.method else 0)


def test_bits_per_weight_bound_follows_the_recipe():
    """Issue 13: HQQ with groups of 32 stores 6 bits per 4-bit weight (fp32 scale and zero per
    32 weights): valid, and within the bound derived from the recipe."""
    r = load_recipe("hqq").replace(weight={"group_size": 32})
    try:
        report = quantize(copy.deepcopy(base_model()), r, 4)
    except MethodUnavailable as e:
        pytest.skip(str(e))
    lo, hi = bits_per_weight_bounds(r, 4)
    assert report.bits_per_weight == pytest.approx(6.0) and lo <= report.bits_per_weight <= hi


MULTI = [n for n in available_recipes() if len(load_recipe(n).bits) > 1]


@pytest.mark.parametrize("name", MULTI)
def test_error_grows_as_bits_shrink(name):
    widths = sorted(load_recipe(name).bits, reverse=True)
    results = [get(name, b) for b in widths]
    w_err = [r[0].weight_error for r in results]
    l_err = [r[1] for r in results]
    assert all(a < b for a, b in zip(w_err, w_err[1:])), dict(zip(widths, w_err))
    assert all(a < b for a, b in zip(l_err, l_err[1:])), dict(zip(widths, l_err))


KV_RECIPES = [n for n in available_recipes() if load_recipe(n).kv_cache is not None]


@pytest.mark.parametrize("name", KV_RECIPES)
def test_kv_error_grows_as_kv_bits_shrink(name):
    results = [get(name, None, kv_bits=b) for b in (8, 4, 2)]
    for t in ("k_error", "v_error"):
        errs = [r[0].extra["kv_cache"][t] for r in results]
        assert errs[0] < errs[1] < errs[2], errs
    diffs = [r[1] for r in results]
    assert diffs[0] < diffs[1] < diffs[2], diffs


def test_attention_map_error_grows_as_bits_shrink():
    for what in ("p", "s"):
        (r8, d8, _), (r4, d4, _) = get(f"attn-{what}8", None), get(f"attn-{what}4", None)
        key = {"p": "probs_error", "s": "scores_error"}[what]
        assert r8.extra["attention"][key] < r4.extra["attention"][key] and d8 < d4


def test_activation_error_grows_as_activation_bits_shrink():
    lw8a8, lw4a8, lw4a4, lw8a4 = (get(n, b, act_bits=a)[1] for n, b, a in
                                  [("w8a-rtn", 8, 8), ("w4a-rtn", 4, 8), ("w4a-rtn", 4, 4), ("w8a-rtn", 8, 4)])
    assert lw8a8 < lw4a8 < lw4a4
    assert lw8a8 < lw8a4
    w8a8, w8a4 = get("w8a-rtn", 8, act_bits=8)[0], get("w8a-rtn", 8, act_bits=4)[0]
    a8, a4 = w8a8.extra["activation"], w8a4.extra["activation"]
    assert 0 < a8["error"] < a4["error"]
    assert set(a8["layers"]) == {lr.name for lr in w8a8.layers}
    # same weights (per-channel symmetric 8-bit RTN): only the activations differ
    assert w8a8.weight_error == w8a4.weight_error
    assert (w8a8.label, w8a4.label) == ("W8A8", "W8A4")


def test_activation_quantization_without_weight_quantization():
    r = load_recipe("w8a-rtn").replace(method=None, bits=[], weight={})
    report = quantize(copy.deepcopy(base_model()), r, None)
    assert report.label == "A8" and report.layers_quantized == 0
    assert report.extra["activation"]["error"] > 0 and len(report.extra["activation"]["layers"]) == 14


def test_outlier_controls_change_the_activation_error():
    """SmoothQuant and the rotation act: the same W4A4 recipe gives different activation errors."""
    errs = {n: get(n, 4, act_bits=4)[0].extra["activation"]["error"] for n in ("w4a-rtn", "w4a-rtn-sq", "w4a-rtn-rot")}
    assert len(set(errs.values())) == 3, errs


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
    import qbench.quant.activation as activation

    monkeypatch.setattr(activation, "fake_quant_act", lambda x, *a, **k: x)
    with pytest.raises(QuantizerDidNothing, match="activation"):
        quantize(copy.deepcopy(base_model()), "w8a-rtn", 8)


@pytest.mark.parametrize("recipe,target", [("kv", "kv_fake_quant"), ("attn-p8", "probs_fake_quant"),
                                           ("attn-s8", "scores_fake_quant")])
def test_attention_side_quantizer_doing_nothing_raises(monkeypatch, recipe, target):
    import qbench.quant.attn as attn

    monkeypatch.setattr(attn, target, lambda x, *a, **k: x.float())
    with pytest.raises(QuantizerDidNothing, match="changed nothing"):
        quantize(copy.deepcopy(base_model()), recipe, None)


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
    assert library_versions("w4a-gptq") == {}
    assert library_versions("mxfp4") == {} and library_versions("w4a-rtn-rot") == {"torchao": version("torchao")}
    assert set(code_versions("w4a-gptq")) == {"quant.core", "quant.gptq", "quant.activation", "calibration"}
    assert set(code_versions("kv")) == {"quant.core", "quant.kv_cache"}
    assert set(code_versions("attn-p8")) == {"quant.core", "quant.attention"}
    assert set(code_versions("w8a-rtn-sq")) == {"quant.core", "quant.rtn", "quant.activation", "quant.smoothquant",
                                                "calibration"}
    from qbench.identity import AREAS

    assert code_versions("rtn") == {"quant.core": AREAS["quant.core"].version, "quant.rtn": AREAS["quant.rtn"].version}
    assert get("rtn", 4)[0].code_versions == code_versions("rtn")


def test_method_without_a_path_on_the_device_says_so():
    with pytest.raises(MethodUnavailable, match="bnb"):
        get_method("bnb").check_available(load_recipe("bnb"), torch.device("mps"))
