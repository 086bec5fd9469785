"""Bad recipes fail before any work, with messages naming the file and the field."""
import copy
import functools

import pytest
import torch

from qbench.model import new_model
from qbench.quant import RecipeError, available_recipes, load_recipe, parse_recipe, quantize
from qbench.paths import RECIPES_DIR

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
    "method-null-weight": ("method: null\nbits: [4]\nweight: {group_size: 64}\n", "bits", "no weight widths"),
    "calib-bad-field": ("method: gptq\nbits: [4]\nweight: {group_size: 64, symmetric: true}\n"
                        "calib: {samples: 8, length: 32}\n", "calib.length", "unknown field"),
    "calib-for-activations": (RTN_OK + "activation: {bits: 8}\ncalib: {samples: 8}\n", "calib", "no calibration"),
    "layers-bad": (RTN_OK + "layers: {include: '*_proj'}\n", "layers.include", "expected list"),
    "nothing": ("description: empty\n", "method", "quantizes nothing"),
    "bits-without-method": ("bits: [4]\nkv_cache: {bits: 4}\n", "bits", "no weight widths"),
    "weight-without-method": ("weight: {group_size: 64}\nkv_cache: {bits: 4}\n", "method", "missing"),
    "transform-alone": ("kv_cache: {bits: 4}\ntransform: {type: rotation}\n", "transform", "only matters"),
    # activation
    "act-missing-bits": (RTN_OK + "activation: {granularity: per_token}\n", "activation.bits", "required for format int"),
    "act-granularity": (RTN_OK + "activation: {bits: 8, granularity: per_channel}\n", "activation.granularity",
                        "not one of"),
    "act-abits": (RTN_OK + "activation: {bits: 1}\n", "activation.bits", "below the minimum"),
    "act-format": (RTN_OK + "activation: {format: int4}\n", "activation.format", "not one of"),
    "act-format-bits": (RTN_OK + "activation: {format: fp8, bits: 4}\n", "activation.bits", "fp8 is 8-bit"),
    "act-block": (RTN_OK + "activation: {format: mxfp4, granularity: per_token}\n", "activation.granularity",
                  "does not go with format mxfp4"),
    "act-fp-asym": (RTN_OK + "activation: {format: fp8, symmetric: false}\n", "activation.symmetric", "symmetric"),
    "act-unknown": (RTN_OK + "activation: {bits: 8, clip: 0.9}\n", "activation.clip", "unknown field"),
    "act-not-mapping": (RTN_OK + "activation: 8\n", "activation", "expected a mapping"),
    "quanto-twice": ("method: quanto\nbits: [8]\nweight: {activations: int8}\nactivation: {bits: 8}\n"
                     "calib: {}\n", "activation", "remove one"),
    # kv_cache
    "kv-missing-bits": ("kv_cache: {k_granularity: per_token}\n", "kv_cache.bits", "required for format int"),
    "kv-granularity": ("kv_cache: {bits: 4, k_granularity: per_head}\n", "kv_cache.k_granularity", "not one of"),
    "kv-group-missing": ("kv_cache: {bits: 4, v_granularity: per_group}\n", "kv_cache.group_size", "required"),
    "kv-group-unused": ("kv_cache: {bits: 4, group_size: 32}\n", "kv_cache.group_size", "only used with per_group"),
    "kv-block-unused": ("kv_cache: {bits: 4, token_block: 32}\n", "kv_cache.token_block", "only used with per_channel"),
    "kv-sink-negative": ("kv_cache: {bits: 4, sink_tokens: -1}\n", "kv_cache.sink_tokens", "below the minimum"),
    "kv-format": ("kv_cache: {format: mxfp4}\n", "kv_cache.format", "not one of"),
    "kv-bits": ("kv_cache: {bits: 9}\n", "kv_cache.bits", "above the maximum"),
    # attention
    "attn-empty": ("attention: {probs_scale: fixed}\n", "attention.probs_bits", "probs_bits or scores_bits"),
    "attn-scale": ("attention: {probs_bits: 8, probs_scale: log}\n", "attention.probs_scale", "not one of"),
    "attn-bits": ("attention: {scores_bits: 1}\n", "attention.scores_bits", "below the minimum"),
    # transform
    "transform-type-missing": (RTN_OK + "transform: {alpha: 0.5}\n", "transform.type", "missing"),
    "transform-type": (RTN_OK + "transform: {type: awq}\n", "transform.type", "not one of"),
    "transform-field": (RTN_OK + "transform: {type: rotation, alpha: 0.5}\n", "transform.alpha", "unknown field"),
    "sq-alpha": (RTN_OK + "transform: {type: smoothquant, alpha: 1.5}\ncalib: {}\n", "transform.alpha",
                 "above the maximum"),
    "sq-calib-bad": (RTN_OK + "transform: {type: smoothquant}\ncalib: {samples: 0}\n", "calib.samples",
                     "below the minimum"),
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
    with pytest.raises(RecipeError, match=r"field 'method': the recipe quantizes nothing"):
        load_recipe(write(tmp_path, "b", "name: b\n"))
    with pytest.raises(RecipeError, match=r"field 'bits': a recipe without a weight method"):
        load_recipe(write(tmp_path, "c", "name: c\nbits: [4]\n"))


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


@pytest.mark.parametrize("recipe", ["hqq", "gptq", "w4a-rtn"])
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


def test_with_axes_varies_activation_and_kv_widths():
    r = load_recipe("w4a-rtn")
    assert r.bits == (4,) and r.activation.bits == 8 and r.label(4) == "W4A8"
    a4 = r.with_axes(act_bits=4)
    assert a4.activation.bits == 4 and a4.weight == r.weight and a4.label(4) == "W4A4"
    assert a4.to_dict() != r.to_dict() and a4.name == r.name        # another cell key, same recipe
    assert r.with_axes(act_bits=None).activation is None and r.with_axes(act_bits=None).label(4) == "4-bit"
    fp8 = r.with_axes(act_bits="fp8")
    assert (fp8.activation.format, fp8.activation.bits, fp8.label(4)) == ("fp8", 8, "W4AFP8")
    assert fp8.with_axes(act_bits=8).activation == r.activation      # back to int: its defaults again
    kv = r.with_axes(kv_bits=2)
    assert kv.kv_cache.bits == 2 and kv.kv_cache.k_granularity == "per_token" and kv.label(4) == "W4A8 KV2"
    sink = load_recipe("kv-kivi-sink").with_axes(kv_bits="fp8")
    assert sink.label(None) == "KVFP8 KcVt sink4" and sink.kv_cache.symmetric
    assert load_recipe("gptq").with_axes(act_bits=8).calib == load_recipe("gptq").calib
    with pytest.raises(RecipeError, match="kv.yaml: field 'method': the recipe quantizes nothing"):
        load_recipe("kv").with_axes(kv_bits=None)
    with pytest.raises(RecipeError, match="activation.bits"):
        r.with_axes(act_bits=12)
    with pytest.raises(RecipeError, match="sweep axis value"):
        r.with_axes(act_bits=[8])


def test_labels():
    cases = {("rtn", 4): "4-bit", ("w8a-rtn-sq", 8): "W8A8 SQ", ("w4a-rtn-rot", 4): "W4A8 Rot",
             ("kv", None): "KV4", ("kv-sink", None): "KV4 sink4", ("kv-kivi", None): "KV4 KcVt",
             ("kv-group", None): "KV4 Kg32Vg32", ("attn-p8", None): "P8", ("attn-p4-rowmax", None): "P4 rowmax",
             ("attn-s4", None): "S4", ("fp8", 8): "FP8", ("mxfp4", 4): "MXFP4", ("nvfp4", 4): "NVFP4",
             ("quanto-w8a8", 8): "W8A8", ("quanto-w8a8-fp8", 8): "W8AFP8"}
    for (name, bits), label in cases.items():
        assert load_recipe(name).label(bits) == label, name
    assert load_recipe("mxfp4").with_axes(act_bits=None).label(4) == "WMXFP4"
    with pytest.raises(RecipeError, match="3-bit requested"):
        load_recipe("w4a-rtn").label(3)
    with pytest.raises(RecipeError, match="no weight method"):
        load_recipe("kv").label(4)


def test_weight_only_recipes_resolve_without_the_other_sections():
    """The resolved form (the cell key's recipe) holds only the sections a recipe has."""
    assert load_recipe("rtn").to_dict() == {
        "name": "rtn", "method": "rtn", "bits": [8, 4, 3, 2],
        "weight": {"group_size": 64, "symmetric": False, "zero_point": "integer"},
        "layers": {"include": ["*_proj"], "exclude": ["lm_head"]}}


def grid_points(sweep_file):
    """(recipe name, bits, label) of every grid point of a sweep file, the axes as the sweep
    expands them (bits x act_bits x kv_bits; see recipes/attention.yaml's header)."""
    import itertools

    import yaml

    out = []
    for entry in yaml.safe_load((RECIPES_DIR / sweep_file).read_text())["grid"]:
        r = load_recipe(entry["recipe"])
        axes = {k: entry[k] for k in ("act_bits", "kv_bits") if k in entry}
        for bits in entry.get("bits", list(r.bits) or [None]):
            for values in itertools.product(*axes.values()):
                point = r.with_axes(**dict(zip(axes, values))) if axes else r
                out.append((r.name, bits, point.label(bits)))
    return out


def test_attention_sweep_grid():
    points = grid_points("attention.yaml")
    assert len(points) == 24   # 48 cells on the pair, plus the 2 full-precision baselines
    labels = {label for _, _, label in points}
    assert len(labels) == len(points)   # every column label tells its point apart
    assert {"KV8", "KV4", "KV2", "KVFP8", "KV4 sink4", "KV2 KcVt sink4", "P8", "P4", "P4 rowmax", "S4",
            "W8A8", "W8A8 SQ", "W8A8 Rot", "W4A4", "W4A4 SQ", "W4A4 Rot", "FP8", "MXFP4", "NVFP4"} <= labels


def test_full_sweep_keeps_its_points():
    """The former w8a8-rtn, w8a4-rtn, w4a8-rtn, w4a4-rtn and w4a8-gptq files are act_bits points now."""
    points = {(n, b, label) for n, b, label in grid_points("full.yaml")}
    assert {("w8a-rtn", 8, "W8A8"), ("w8a-rtn", 8, "W8A4"), ("w4a-rtn", 4, "W4A8"), ("w4a-rtn", 4, "W4A4"),
            ("w4a-gptq", 4, "W4A8"), ("quanto-w8a8", 8, "W8A8"), ("quanto-w8a8-fp8", 8, "W8AFP8")} <= points
    assert len(points) == 24
