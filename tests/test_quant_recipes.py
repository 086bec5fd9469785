"""Bad recipes fail before any work, with messages naming the file and the field."""
import copy
import functools

import pytest
import torch

from qbench.model import new_model
from qbench.quant import RecipeError, available_recipes, load_recipe, parse_recipe, quantize
from qbench.quant.recipe import RECIPES_DIR

TINY = dict(hidden_size=128, num_hidden_layers=1, num_heads=4, num_kv_heads=2, vocab_size=64,
            max_position_embeddings=64)


@functools.lru_cache(maxsize=None)
def _model():
    return new_model("softmax", seed=0, **TINY)


def model():
    return copy.deepcopy(_model())


def state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def write(tmp_path, name, body):
    p = tmp_path / f"{name}.yaml"
    p.write_text(body)
    return p


RTN_OK = "method: rtn\nbits: [8, 4]\nweight: {group_size: 64, symmetric: false}\n"

BAD = {
    # name: (yaml body after `name:`, field named in the error, words in the problem)
    "unknown-method": ("method: awq\nbits: [4]\nweight: {}\n", "method", "unknown method"),
    "bits-unsupported": ("method: bnb\nbits: [8, 3]\nweight: {quant_type: nf4}\n", "bits", "3-bit is not supported"),
    "bits-hqq-5": ("method: hqq\nbits: [5]\nweight: {group_size: 64}\n", "bits", "not supported"),
    "bits-missing": ("method: rtn\nweight: {group_size: 64, symmetric: false}\n", "bits", "missing"),
    "bits-not-list": ("method: rtn\nbits: 4\nweight: {group_size: 64, symmetric: false}\n", "bits", "list"),
    "bits-str": ("method: rtn\nbits: ['4']\nweight: {group_size: 64, symmetric: false}\n", "bits[0]", "integer"),
    "missing-weight-field": ("method: rtn\nbits: [4]\nweight: {group_size: 64}\n", "weight.symmetric", "missing"),
    "unknown-weight-field": ("method: rtn\nbits: [4]\nweight: {group_size: 64, symmetric: true, clip: 0.9}\n",
                             "weight.clip", "unknown field"),
    "unknown-top-field": (RTN_OK + "groupsize: 64\n", "groupsize", "unknown field"),
    "bad-type-group": ("method: rtn\nbits: [4]\nweight: {group_size: '64', symmetric: true}\n",
                       "weight.group_size", "expected int"),
    "bad-type-bool": ("method: rtn\nbits: [4]\nweight: {group_size: 64, symmetric: 1}\n",
                      "weight.symmetric", "expected bool"),
    "bad-choice": ("method: bnb\nbits: [4]\nweight: {quant_type: int4}\n", "weight.quant_type", "not one of"),
    "bnb-4-needs-type": ("method: bnb\nbits: [8, 4]\nweight: {}\n", "weight.quant_type", "missing"),
    "calib-not-used": (RTN_OK + "calib: {samples: 8, seq_len: 32, seed: 0}\n", "calib", "no calibration"),
    "calib-bad-field": ("method: gptq\nbits: [4]\nweight: {group_size: 64, symmetric: true}\n"
                        "calib: {samples: 8, length: 32}\n", "calib.length", "unknown field"),
    "activation-not-supported": (RTN_OK + "activation: {bits: 8}\n", "activation", "does not quantize activations"),
    "layers-bad": (RTN_OK + "layers: {include: '*_proj'}\n", "layers.include", "expected list"),
    "act-missing-activation": ("method: act\nweight: {method: rtn, bits: 4, group_size: 64, symmetric: true}\n",
                               "activation", "missing"),
    "act-missing-inner": ("method: act\nweight: {bits: 4}\nactivation: {bits: 8}\n", "weight.method", "missing"),
    "act-unknown-inner": ("method: act\nweight: {method: awq, bits: 4}\nactivation: {bits: 8}\n",
                          "weight.method", "unknown method"),
    "act-bits-mismatch": ("method: act\nbits: [8]\nweight: {method: rtn, bits: 4, group_size: 64, symmetric: true}\n"
                          "activation: {bits: 8}\n", "bits", "exactly its weight width"),
    "act-inner-bits": ("method: act\nweight: {method: bnb, bits: 3, quant_type: nf4}\nactivation: {bits: 8}\n",
                       "weight.bits", "not supported"),
    "act-inner-field": ("method: act\nweight: {method: rtn, bits: 4, group_size: 64}\nactivation: {bits: 8}\n",
                        "weight.symmetric", "missing"),
    "act-granularity": ("method: act\nweight: {method: rtn, bits: 4, group_size: 64, symmetric: true}\n"
                        "activation: {bits: 8, granularity: per_channel}\n", "activation.granularity", "not one of"),
    "act-abits": ("method: act\nweight: {method: rtn, bits: 4, group_size: 64, symmetric: true}\n"
                  "activation: {bits: 1}\n", "activation.bits", "below the minimum"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_recipe_names_file_and_field(tmp_path, name):
    body, field, words = BAD[name]
    p = write(tmp_path, name, f"name: {name}\n" + body)
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg and f"field '{field}'" in msg and words in msg, msg
    assert e.value.field == field


def test_name_must_match_file(tmp_path):
    p = write(tmp_path, "mine", "name: other\n" + RTN_OK)
    with pytest.raises(RecipeError, match=r"mine.yaml: field 'name'"):
        load_recipe(p)


def test_missing_name_and_method(tmp_path):
    with pytest.raises(RecipeError, match=r"field 'name': missing"):
        load_recipe(write(tmp_path, "a", RTN_OK))
    with pytest.raises(RecipeError, match=r"field 'method': missing"):
        load_recipe(write(tmp_path, "b", "name: b\nbits: [4]\n"))


def test_not_yaml_and_not_a_mapping(tmp_path):
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "c", "name: [c\n"))
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(write(tmp_path, "d", "- 1\n- 2\n"))


def test_unknown_recipe_name():
    with pytest.raises(RecipeError, match="no recipe named 'nope'"):
        load_recipe("nope")


def test_shipped_recipes_load_and_resolve():
    names = available_recipes()
    assert names
    for name in names:
        p = RECIPES_DIR / f"{name}.yaml"
        r = load_recipe(name)
        assert r.name == p.stem and r.source == str(p)
        assert parse_recipe(r.to_dict(), source="x").to_dict() == r.to_dict()  # resolved form round-trips


def test_group_size_not_dividing_fails_before_any_work(tmp_path):
    p = write(tmp_path, "g48", "name: g48\nmethod: rtn\nbits: [4]\nweight: {group_size: 48, symmetric: false}\n")
    m = model()
    before = state(m)
    with pytest.raises(RecipeError) as e:
        quantize(m, p, 4)
    msg = str(e.value)
    assert str(p) in msg and "field 'weight.group_size'" in msg and "in_features=128" in msg, msg
    assert same(before, state(m))


@pytest.mark.parametrize("recipe", ["hqq", "gptq", "w4a8-rtn"])
def test_group_size_check_for_other_methods(tmp_path, recipe):
    r = load_recipe(recipe)
    w = dict(r.weight)
    w["group_size"] = 96
    r = r.replace(weight=w)
    m = model()
    before = state(m)
    calib = torch.zeros(r.calib["samples"], r.calib["seq_len"], dtype=torch.long) if r.calib else None
    with pytest.raises(RecipeError, match="weight.group_size"):
        quantize(m, r, r.bits[0], calib)
    assert same(before, state(m))


def test_bits_not_in_recipe_fails_before_any_work():
    m = model()
    before = state(m)
    with pytest.raises(RecipeError, match=r"bnb.yaml: field 'bits': 3-bit requested"):
        quantize(m, "bnb", 3)
    assert same(before, state(m))


def test_calibration_batch_required_and_checked():
    m = model()
    before = state(m)
    with pytest.raises(RecipeError, match=r"gptq.yaml: field 'calib'"):
        quantize(m, "gptq", 4)
    with pytest.raises(RecipeError, match=r"shape \[4, 16\]"):
        quantize(m, "gptq", 4, torch.zeros(4, 16, dtype=torch.long))
    with pytest.raises(RecipeError, match="LongTensor"):
        quantize(m, "gptq", 4, torch.zeros(128, 512))
    assert same(before, state(m))


def test_act_recipe_bits_rule():
    r = load_recipe("w4a8-rtn")
    assert r.bits == (4,) and r.weight["bits"] == 4 and r.activation["bits"] == 8
    d = r.to_dict()
    del d["bits"]                     # bits may be left out: it is [weight.bits]
    assert parse_recipe(d).bits == (4,)
