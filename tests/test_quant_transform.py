"""Outlier-mitigation transforms (qbench/quant/smoothquant.py, rotation.py): full-precision
outputs unchanged (within 1e-4) on qbench's model and on transformers' LlamaForCausalLM, the
SmoothQuant factor against torchao's observer, and rotations that follow a replaced layer."""
import copy

import pytest
import torch

from qbench.model import new_model
from qbench.quant import RecipeError, load_recipe, quantize, rotation, smoothquant
from qbench.quant.layout import find_layout

TINY = dict(hidden_size=128, num_hidden_layers=2, num_heads=4, num_kv_heads=2, vocab_size=256,
            max_position_embeddings=128)
CALIB = {"samples": 4, "seq_len": 32, "seed": 0}


def randomize_norms(model, seed=0):
    """Norm weights away from 1 (as trained models have), so folding them matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model


def qbench_model(tied=True):
    return randomize_norms(new_model("softmax", seed=0, tie_word_embeddings=tied, **TINY))


def llama_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    return randomize_norms(LlamaForCausalLM(cfg).eval())


def ids(vocab, shape=(2, 32), seed=1):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(x, use_cache=False).logits


def assert_unchanged(before, after):
    assert (after - before).abs().max() < 1e-4
    assert float((after - before).norm() / before.norm()) < 1e-5


@pytest.mark.parametrize("make", [qbench_model, llama_model], ids=["qbench", "transformers-llama"])
def test_rotation_leaves_full_precision_outputs_unchanged(make):
    model = make()
    x = ids(model.config.vocab_size)
    ref = logits(model, x)
    q_before = model.get_submodule(find_layout(model, "t").blocks[0].qkv[0]).weight.clone()
    info = rotation.apply(model, load_recipe("w4a-rtn-rot"))
    assert_unchanged(ref, logits(model, x))
    assert info["untied_lm_head"] and not model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    layout = find_layout(model, "t")
    assert not torch.allclose(model.get_submodule(layout.blocks[0].qkv[0]).weight, q_before)   # it acted
    assert all(torch.equal(b.attn_norm.weight, torch.ones_like(b.attn_norm.weight)) for b in layout.blocks)


@pytest.mark.parametrize("make", [qbench_model, llama_model], ids=["qbench", "transformers-llama"])
def test_smoothquant_leaves_full_precision_outputs_unchanged(make):
    model = make()
    x = ids(model.config.vocab_size)
    ref = logits(model, x)
    recipe = load_recipe("w8a-rtn-sq").replace(calib=CALIB)
    info = smoothquant.apply(model, recipe, ids(model.config.vocab_size, (4, 32), seed=2))
    assert_unchanged(ref, logits(model, x))
    assert info["groups"] == 3 * len(find_layout(model, "t").blocks) and info["scale_min"] < 1 < info["scale_max"]
    # the largest input channel stands out less after smoothing
    assert all(after < before for before, after in info["input_max_over_median"].values())


def test_smoothing_factor_is_torchaos_for_one_linear_and_the_group_max_for_several():
    sq_core = pytest.importorskip("torchao.prototype.smoothquant.core")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 10, 32, generator=g) * torch.linspace(0.1, 8, 32)
    lins = [torch.nn.Linear(32, n) for n in (16, 8, 8)]
    obs = sq_core.SmoothQuantObserver(lins[0].weight.detach(), alpha=0.6)
    obs(x)
    want, _, _ = obs.calculate_qparams()
    a = x.abs().reshape(-1, 32).amax(dim=0)
    assert torch.equal(smoothquant.smoothing_factor(a, lins[0].weight.detach().abs().amax(dim=0), 0.6), want)
    w = torch.cat([lin.weight.detach() for lin in lins]).abs().amax(dim=0)
    eps = torch.finfo(torch.float32).eps
    assert torch.equal(smoothquant.smoothing_factor(a, w, 0.6), (a + eps) ** 0.6 / (w + eps) ** 0.4)


def test_rotation_follows_a_layer_the_weight_method_replaces():
    """HQQ replaces down_proj by HQQLinear: the online Hadamard must move with it, else the
    rotated weights meet unrotated inputs."""
    base = qbench_model(tied=False)
    x = ids(256)
    ref = logits(base, x)
    r = load_recipe("w8a-rtn-rot").replace(method="hqq", bits=[8], weight={"group_size": 64}, activation=None)
    model = copy.deepcopy(base)
    rep = quantize(model, r, 8)
    assert rep.label == "8-bit Rot" and rep.extra["transform"]["logit_change"] < 1e-5
    down = model.get_submodule("model.layers.0.mlp.down_proj")
    assert type(down).__name__ == "HQQLinear" and down.qbench_input.fns
    assert float((logits(model, x) - ref).norm() / ref.norm()) < 0.05


def test_layer_hooks_see_the_rotated_input():
    """GPTQ's Hessians and quanto's calibration read a layer's input through forward hooks:
    they must see x H, the input down_proj computes with."""
    model = qbench_model()
    rotation.apply(model, load_recipe("w4a-rtn-rot"))
    mlp, seen = model.model.layers[0].mlp, {}
    mlp.gate_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("gate", o))
    mlp.up_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("up", o))
    mlp.down_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("down_in", i[0]))
    logits(model, ids(256))
    h = mlp.down_proj.qbench_input.fns[0].h
    want = (torch.nn.functional.silu(seen["gate"]) * seen["up"]) @ h
    assert torch.allclose(seen["down_in"], want, atol=1e-5)
    assert not torch.allclose(seen["down_in"], want @ h.T, atol=1e-3)


def test_rotation_before_gptq():
    model = qbench_model(tied=False)
    r = load_recipe("gptq").replace(calib=CALIB, transform={"type": "rotation"})
    rep = quantize(model, r, 4, ids(256, (4, 32), seed=3))
    assert rep.label == "4-bit Rot" and rep.extra["transform"]["logit_change"] < 1e-5
    assert set(rep.code_versions) == {"quant.core", "quant.gptq", "quant.rotation", "calibration"}
    assert "torchao" in rep.library_versions


def test_transform_on_a_model_that_is_not_a_llama_is_a_recipe_error():
    model = torch.nn.Module()
    model.up_proj = torch.nn.Linear(8, 8)
    with pytest.raises(RecipeError, match=r"field 'transform'.*Llama-style"):
        quantize(model, load_recipe("w8a-rtn-rot"), 8)


def test_rotation_needs_a_hadamard_size():
    model = new_model("softmax", seed=0, **{**TINY, "intermediate_size": 200})
    with pytest.raises(RecipeError, match="no Hadamard matrix for the MLP width 200"):
        quantize(model, load_recipe("w8a-rtn-rot"), 8)
