"""SmolLM2-135M (a real GGUF model, fetched once by `qbench data models` into DATA_DIR/models):
our loading equals transformers' own Llama, its Q4_1 grid, its sinks and massive activations."""
import copy

import pytest
import torch

from qbench.model import inspect_checkpoint, load_model
from qbench.model.real import real_model_path

NAME = "smollm2-135m"


@pytest.fixture(scope="module")
def smollm2():
    return load_model(real_model_path(NAME))


@pytest.fixture(scope="module")
def text_batch(smollm2):
    from qbench.diagnostics import DEFAULT_TEXT
    from qbench.diagnostics.collect import read_documents, sample_windows

    docs, _ = read_documents(DEFAULT_TEXT)
    ids, _ = sample_windows(smollm2.tokenizer, docs, 3, 48, seed=1)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0     # right padding
    return ids, mask


def test_smollm2_inspect(smollm2):
    info = inspect_checkpoint(real_model_path(NAME, fetch=False))
    assert (info.format, info.architecture, info.attention, info.parameters) == ("gguf", "LlamaForCausalLM",
                                                                                  "softmax", 134_515_008)
    assert info.gguf_types == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert info.max_positions == 8192 and info.num_layers == 30 and len(info.linear_layers) == 211
    assert smollm2.content_hash == "b179c9523d0e6a0f"   # the GGUF's bytes
    # the special tokens the GGUF names (transformers' conversion alone says eos <|im_start|>)
    tok = smollm2.tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.eos_token_id == smollm2.model.config.eos_token_id == 2


def test_logits_equal_stock_transformers_llama(smollm2, text_batch):
    """Our loading (softmax through qbench's attend) vs transformers' own LlamaForCausalLM with its
    stock attention (sdpa, eager) on the same weights (dequantized from the same GGUF by transformers)."""
    from transformers import LlamaForCausalLM

    from qbench.attention import backend_log

    ids, mask = text_batch
    keep = mask.bool()
    assert smollm2.model.config._attn_implementation == "qbench"
    with torch.no_grad(), backend_log() as ran:
        ours = smollm2.model(ids, attention_mask=mask).logits
    assert ran == {"softmax:sdpa"}
    for impl in ("sdpa", "eager"):
        stock = copy.deepcopy(smollm2.model)          # the same LlamaForCausalLM, stock attention
        stock.set_attn_implementation(impl)
        assert type(stock) is LlamaForCausalLM and stock.config._attn_implementation == impl
        with torch.no_grad():
            theirs = stock(ids, attention_mask=mask).logits
        assert (ours[keep] - theirs[keep]).abs().max() < 1e-4, impl
        del stock


def on_float_min_grid(w: torch.Tensor, bits=4, group=32) -> bool:
    """w lies exactly on an asymmetric min-max grid with a float offset per group (GGUF Q4_1:
    w = d * q + m, q in 0..15, d = (max - min) / 15, m = min)."""
    g = w.double().reshape(-1, group)
    lo, hi = g.min(1, keepdim=True).values, g.max(1, keepdim=True).values
    scale = (hi - lo) / (2 ** bits - 1)
    q = torch.round((g - lo) / torch.where(scale > 0, scale, torch.ones_like(scale)))
    return bool(((lo + scale * q).float().reshape(w.shape) == w).all())


def test_smollm2_linear_weights_lie_on_the_q4_1_grid(smollm2):
    linears = {n: m for n, m in smollm2.model.named_modules() if n.endswith("_proj")}
    assert len(linears) == 210
    assert all(on_float_min_grid(m.weight.data) for m in linears.values())


def test_rtn_4bit_g32_reproduces_q4_1_and_the_harness_reports_no_change(smollm2, tmp_path):
    from qbench.quant import QuantizerDidNothing, quantize
    from qbench.quant.rtn import rtn_weight

    w = smollm2.model.model.layers[0].self_attn.v_proj.weight.data
    assert torch.equal(rtn_weight(w, 4, 32, symmetric=False, zero_point="float"), w)
    assert not torch.equal(rtn_weight(w, 4, 32, symmetric=False), w)          # gptq's integer zero point moves them
    recipe = tmp_path / "rtn-g32.yaml"
    recipe.write_text("name: rtn-g32\nmethod: rtn\nbits: [4]\nweight: {group_size: 32, symmetric: false, "
                      "zero_point: float}\n")
    with pytest.raises(QuantizerDidNothing):
        quantize(copy.deepcopy(smollm2.model), recipe, 4)


def test_smollm2_has_sinks_and_massive_activations(smollm2):
    from qbench.diagnostics import diagnose_arms

    result = diagnose_arms([(NAME, smollm2)], samples=4, seq_len=64, subsamples=2, batch_size=4)
    summary = result["models"][NAME]["summary"]
    assert summary["sink_0.3"]["value"] > 40
    assert max(abs(summary["min_act"]["value"]), summary["max_act"]["value"]) > 10_000
    assert result["models"][NAME]["attention_path"] == "maps"
