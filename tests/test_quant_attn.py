"""KV-cache and attention-map quantization (qbench/quant/attn.py): the grids bit-exactly on
hand-computed examples, the hook acting inside qbench.attention.attend (which path ran), sink
protection, and the proof-it-acted checks."""
import copy
import functools

import pytest
import torch

from qbench.attention import attend, backend_log
from qbench.model import new_model
from qbench.quant import QuantizerDidNothing, RecipeError, load_recipe, parse_recipe, quantize
from qbench.quant.attn import AttnQuant, kv_fake_quant, probs_fake_quant, scores_fake_quant
from qbench.quant.recipe import AttentionConfig, KVCacheConfig

TINY = dict(hidden_size=128, num_hidden_layers=2, num_heads=4, num_kv_heads=2, vocab_size=256,
            max_position_embeddings=128)


def kv(**fields):
    return KVCacheConfig.parse({"bits": 2, **fields}, "<test>")


def bhtd(rows):
    """[T, D] rows -> [1, 1, T, D] float32."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


# ----------------------------------------------------------------------- the KV grids
def test_kv_per_token_minmax_hand_example():
    # 2 bits, one (min, scale) per token: s = (max - min) / 3 = 1 for both tokens; 2.5 -> 2 (half to even)
    x = bhtd([[0.0, 1.0, 2.5, 3.0], [-1.0, -0.2, 0.6, 2.0]])
    want = bhtd([[0.0, 1.0, 2.0, 3.0], [-1.0, 0.0, 1.0, 2.0]])
    assert torch.equal(kv_fake_quant(x, kv(), "per_token"), want)


def test_kv_symmetric_hand_example():
    # 3 bits symmetric: s = absmax / 3 = 1 -> 0.5 rounds to 0
    x = bhtd([[1.0, -2.0, 0.5, 3.0]])
    assert torch.equal(kv_fake_quant(x, kv(bits=3, symmetric=True), "per_token"), bhtd([[1.0, -2.0, 0.0, 3.0]]))


def test_kv_per_channel_blocks_of_tokens_hand_example():
    # channel 0 over blocks of 2 tokens: [0, 3] and [1, 4], each s = 1; channel 1 constant (stays)
    x = bhtd([[0.0, -2.0], [3.0, -2.0], [1.0, -2.0], [4.0, -2.0]])
    cfg = kv(k_granularity="per_channel", token_block=2)
    assert torch.equal(kv_fake_quant(x, cfg, "per_channel"), x)
    # the whole sequence as one block: channel 0 in [0, 4], s = 4/3 -> levels 0, 2, 1, 3
    whole = kv_fake_quant(x, kv(k_granularity="per_channel"), "per_channel")
    s = torch.tensor(4.0) / 3
    assert torch.equal(whole[0, 0, :, 0], torch.tensor([0.0, 2.0, 1.0, 3.0]) * s)


def test_kv_per_group_hand_example():
    # groups of 2 channels, each group's range 3 (s = 1): exact; per token the range would be 13
    x = bhtd([[0.0, 3.0, 10.0, 13.0], [2.0, 5.0, 20.0, 23.0]])
    cfg = kv(k_granularity="per_group", v_granularity="per_group", group_size=2)
    assert torch.equal(kv_fake_quant(x, cfg, "per_group"), x)
    assert not torch.equal(kv_fake_quant(x, kv(), "per_token"), x)


def test_kv_fp8_hand_example():
    x = bhtd([[448.0, 1.0, 0.3, -17.0]])
    assert torch.equal(kv_fake_quant(x, kv(format="fp8", bits=None), "per_token"),
                       bhtd([[448.0, 1.0, 0.3125, -16.0]]))


def test_sink_tokens_stay_exact_and_out_of_the_statistics():
    # token 0 (the sink) is kept; per channel, its outlier 100 does not widen channel 0's range
    x = bhtd([[100.0, 5.0], [0.0, 1.0], [3.0, 4.0]])
    cfg = kv(k_granularity="per_channel", sink_tokens=1)
    assert torch.equal(kv_fake_quant(x, cfg, "per_channel"), x)
    without = kv_fake_quant(x, kv(k_granularity="per_channel"), "per_channel")
    assert not torch.equal(without[0, 0, 1:], x[0, 0, 1:])


# ----------------------------------------------------------------------- the attention-map grids
def test_probs_fixed_grid_hand_example():
    # 2 bits, s = 1/3 (float32): p / s = 2.7, 0.3, 0, 1.5 (a tie in float32) -> levels 3, 0, 0, 2
    p = torch.tensor([[0.9, 0.1, 0.0, 0.5]])
    s = torch.tensor(1.0 / 3)
    assert torch.equal(probs_fake_quant(p, 2, "fixed"), torch.tensor([[3.0, 0.0, 0.0, 2.0]]) * s)


def test_probs_row_max_grid_hand_example():
    # 2 bits, s = row max / 3 = 0.25: p / s = 3, 1.5, 0.5, 0 -> 3, 2, 0, 0 (half to even);
    # an all-zero row (softpick can give one) stays zero
    p = torch.tensor([[0.75, 0.375, 0.125, 0.0], [0.0, 0.0, 0.0, 0.0]])
    want = torch.tensor([[0.75, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(probs_fake_quant(p, 2, "row_max"), want)


def test_scores_grid_uses_the_causal_entries_only():
    # 3 bits symmetric per row; row 0 sees key 0 only: s = 1.5 / 3 = 0.5 (the masked 100 is left
    # out; it is clamped to 3 levels); row 1: s = 3 / 3 = 1 -> 1.2 rounds to 1
    x = torch.tensor([[[[1.5, 100.0], [-3.0, 1.2]]]])
    assert torch.equal(scores_fake_quant(x, 3), torch.tensor([[[[1.5, 1.5], [-3.0, 1.0]]]]))


# ----------------------------------------------------------------------- inside attend()
def _qkv(t=8):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 4, t, 16, generator=g), torch.randn(1, 2, t, 16, generator=g),
            torch.randn(1, 2, t, 16, generator=g))


@pytest.mark.parametrize("kind", ["softmax", "softpick"])
def test_kv_quantizer_runs_on_the_fast_path_and_probs_on_the_maps_path(kind):
    q, k, v = _qkv()
    ref, _ = attend(q, k, v, kind)
    kvq = AttnQuant(kv(bits=4), None)
    with backend_log() as ran:
        out, _ = attend(q, k, v, kind, quant=kvq)
    assert not kvq.needs_maps and not any(r.endswith(":maps") for r in ran)
    assert not torch.equal(out, ref)
    pq = AttnQuant(None, AttentionConfig.parse({"probs_bits": 4}, "<test>"))
    with backend_log() as ran:
        out_p, _ = attend(q, k, v, kind, quant=pq)
    assert ran == {f"{kind}:maps"}
    # the maps path with the quantized maps: exactly weights_q @ v
    from qbench.attention import attention_weights, repeat_kv

    w = probs_fake_quant(attention_weights(q, repeat_kv(k, 4), kind), 4, "fixed")
    assert torch.allclose(out_p, w @ repeat_kv(v, 4), atol=1e-6)


# ----------------------------------------------------------------------- through quantize()
@functools.lru_cache(maxsize=None)
def base(kind):
    return new_model(kind, seed=0, **TINY)


def run(name_or_recipe, kind="softmax", **axes):
    r = load_recipe(name_or_recipe)
    if axes:
        r = r.with_axes(**axes)
    m = copy.deepcopy(base(kind))
    return quantize(m, r, None), m


@pytest.mark.parametrize("kind", ["softmax", "softpick"])
def test_report_proves_kv_and_probs_quantizers_acted(kind):
    rep, model = run("kv-kivi", kind)
    kvr = rep.extra["kv_cache"]
    assert kvr["k_error"] > 0 and kvr["v_error"] > 0 and len(kvr["layers"]) == TINY["num_hidden_layers"]
    assert kvr["backends"] == [f"{kind}:sdpa" if kind == "softmax" else "softpick:reference"]
    assert rep.method is None and rep.bits is None and rep.layers_quantized == 0 and rep.label == "KV4 KcVt"
    rep, _ = run("attn-p4", kind)
    assert rep.extra["attention"]["probs_error"] > 0 and rep.extra["attention"]["backends"] == [f"{kind}:maps"]


def test_sink_protection_of_the_whole_probe_does_nothing():
    r = load_recipe("kv-sink").replace(kv_cache={**load_recipe("kv-sink").kv_cache.to_dict(), "sink_tokens": 64})
    with pytest.raises(QuantizerDidNothing, match="K quantization changed nothing"):
        quantize(copy.deepcopy(base("softmax")), r, None)


def test_sink_protection_lowers_the_error():
    plain, _ = run("kv", kv_bits=2)
    sink, _ = run("kv-sink", kv_bits=2)
    assert sink.extra["kv_cache"]["k_error"] < plain.extra["kv_cache"]["k_error"]


def test_model_without_attention_modules_is_an_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(QuantizerDidNothing, match="attn_quant"):
        quantize(model, "kv", None)


def test_kv_group_size_must_divide_head_dim():
    r = load_recipe("kv-group")
    r = r.replace(kv_cache={**r.kv_cache.to_dict(), "group_size": 24})
    m = copy.deepcopy(base("softmax"))
    with pytest.raises(RecipeError, match=r"kv_cache.group_size'.*head_dim=32"):
        quantize(m, r, None)
    assert all(a.attn_quant is None for a in (blk.attn for blk in m.model.layers))


def test_quantizing_attention_twice_is_an_error():
    _, m = run("kv")
    with pytest.raises(Exception, match="already has an attention-side quantizer"):
        quantize(m, "kv", None)


def test_kv_recipe_bits_rule():
    with pytest.raises(RecipeError, match="has no weight method"):
        quantize(copy.deepcopy(base("softmax")), "kv", 4)
    with pytest.raises(RecipeError, match=r"kv_cache.bits'.*fp8 is 8-bit"):
        parse_recipe({"name": "x", "kv_cache": {"format": "fp8", "bits": 4}})
