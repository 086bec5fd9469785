"""Every attention kind inside transformers' own models (Llama, Qwen2, Gemma3): softmax through
qbench's attention equals transformers' stock attention; every kind equals qbench's own model on
the same weights, on padded batches, with gradients; kinds are forced per load."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, Qwen2Config

from qbench.attention import backend_log, kinds
from qbench.model import attention_modules, checkpoint_hash, inspect_checkpoint, load_model, new_model, save_checkpoint
from test_model import to_llama

VOCAB = 300
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
CONFIGS = {
    "llama": lambda: LlamaConfig(**SMALL),
    "qwen2": lambda: Qwen2Config(**SMALL),   # q/k/v biases
    "gemma3": lambda: Gemma3TextConfig(**{**SMALL, "num_key_value_heads": 1}, head_dim=16, sliding_window=4,
                                       query_pre_attn_scalar=16, layer_types=["sliding_attention", "full_attention"]),
}


def save_hf(folder, config, tokenizer, seed=0, **fields):
    """A random transformers model saved as a folder (norm weights made non-trivial)."""
    for name, value in fields.items():
        setattr(config, name, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def batch():
    g = torch.Generator().manual_seed(7)
    x = torch.randint(3, VOCAB, (3, 12), generator=g)
    mask = torch.ones_like(x)
    mask[1, 8:] = 0    # right padding as lm-eval sends it
    mask[2, :5] = 0    # left padding
    return x, mask


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("hf")
    return {name: save_hf(root / name, make(), tokenizer) for name, make in CONFIGS.items()}


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_softmax_through_attend_equals_stock_transformers(hf_folders, arch):
    ckpt = load_model(hf_folders[arch])
    assert ckpt.format == "transformers" and ckpt.attention == "softmax"
    assert ckpt.model.config._attn_implementation == "qbench"
    assert len(attention_modules(ckpt.model)) == 2
    x, mask = batch()
    keep = mask.bool()
    with torch.no_grad(), backend_log() as ran:
        ours = ckpt.model(x, attention_mask=mask).logits
    assert ran == {"softmax:sdpa"}
    for impl in ("eager", "sdpa"):
        stock = AutoModelForCausalLM.from_pretrained(hf_folders[arch], attn_implementation=impl).eval()
        with torch.no_grad():
            theirs = stock(x, attention_mask=mask).logits
        assert (ours[keep] - theirs[keep]).abs().max() < 1e-5, impl


def test_gemma3_sliding_window_is_applied(hf_folders):
    """12 tokens over a window of 4: the sliding layer's mask reaches attend (a general mask), the
    full layer's is reduced to plain causal; without the window the logits differ."""
    x, _ = batch()
    ckpt = load_model(hf_folders["gemma3"], attention="softpick")
    seen = []
    for _, module in attention_modules(ckpt.model):
        module.attn_observer = lambda q, k, kind, scale, key_mask, mask: seen.append(mask is not None)
    with torch.no_grad():
        windowed = ckpt.model(x).logits
        ckpt.model.config.sliding_window = 64
        unwindowed = ckpt.model(x).logits
    assert seen[:2] == [True, False]
    assert torch.allclose(windowed[:, :4], unwindowed[:, :4], atol=1e-5)   # inside the window: the same
    assert not torch.allclose(windowed, unwindowed, atol=1e-3)


def to_transformers_folder(qbench_dir, out, attention=None):
    """The same weights as a transformers Llama folder (config field qbench_attention when given)."""
    model = AutoModelForCausalLM.from_pretrained(qbench_dir)
    llama = to_llama(model)
    if attention:
        llama.config.qbench_attention = attention
    llama.save_pretrained(out)
    for p in qbench_dir.iterdir():
        if "token" in p.name:
            (out / p.name).write_bytes(p.read_bytes())
    return out


@pytest.mark.parametrize("kind", list(kinds.KINDS))
def test_every_kind_in_transformers_equals_qbench_model(tmp_path, tokenizer, kind):
    ours_dir = tmp_path / "qbench"
    model = new_model(kind, seed=4, hidden_size=64, num_hidden_layers=2, num_heads=4, num_kv_heads=2,
                      vocab_size=VOCAB, max_position_embeddings=64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    save_checkpoint(model, tokenizer, ours_dir)
    hf_dir = to_transformers_folder(ours_dir, tmp_path / "hf", attention=kind)
    ours, theirs = load_model(ours_dir), load_model(hf_dir)
    assert (ours.format, theirs.format) == ("qbench", "transformers")
    assert ours.attention == theirs.attention == kind
    assert inspect_checkpoint(hf_dir).attention_source == "config.json qbench_attention"
    x, mask = batch()
    keep = mask.bool()
    a = ours.model(x, attention_mask=mask).logits
    b = theirs.model(x, attention_mask=mask).logits
    assert (a[keep] - b[keep]).abs().max() < 1e-4
    alone = theirs.model(x[1:2, :8]).logits[0]
    assert (b[1, :8] - alone).abs().max() < 1e-4          # padding changes nothing
    # differentiable (continued training switches real models' attention): same gradients
    (a[keep].logsumexp(-1).sum()).backward()
    (b[keep].logsumexp(-1).sum()).backward()
    ga = ours.model.model.layers[0].attn.q_proj.weight.grad
    gb = theirs.model.model.layers[0].self_attn.q_proj.weight.grad
    assert torch.isfinite(gb).all() and gb.abs().sum() > 0
    assert torch.allclose(ga, gb, atol=1e-4, rtol=1e-3)


def test_forced_attention_per_load(tiny_pair):
    """The tiny pair shares its init: the softmax checkpoint forced to softpick is the softpick one."""
    softmax_dir, softpick_dir = tiny_pair
    forced = load_model(softmax_dir, attention="softpick")
    assert forced.attention == "softpick" and forced.info.own_attention == "softmax"
    assert forced.info.attention_source.startswith("forced")
    x = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(forced.model(x).logits, load_model(softpick_dir).model(x).logits)
    # what makes the numbers differs, so does the hash; forcing a checkpoint's own kind changes nothing
    assert forced.content_hash != checkpoint_hash(softmax_dir)
    assert checkpoint_hash(softmax_dir, "softmax") == checkpoint_hash(softmax_dir)
    with pytest.raises(kinds.AttentionError, match="unknown attention kind 'softpik'"):
        load_model(softmax_dir, attention="softpik")


def test_attention_quantizer_hook_acts_in_transformers_models(hf_folders):
    ckpt = load_model(hf_folders["llama"], attention="softpick")
    x, mask = batch()
    with torch.no_grad():
        plain = ckpt.model(x, attention_mask=mask).logits

    class KV:
        needs_maps = False
        scores = probs = None

        @staticmethod
        def k(t):
            return torch.round(t * 2) / 2

        v = k

    for _, module in attention_modules(ckpt.model):
        module.attn_quant = KV()
    with torch.no_grad():
        quantized = ckpt.model(x, attention_mask=mask).logits
    assert not torch.allclose(plain, quantized)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_softpick_kernel_inside_transformers_on_cuda(tmp_path, tokenizer, monkeypatch):
    """On CUDA softpick runs the Triton kernel inside transformers' Llama (forward and backward,
    right padding), and agrees with the torch reference (QBENCH_SOFTPICK_KERNEL=0)."""
    config = LlamaConfig(**{**SMALL, "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2})
    folder = save_hf(tmp_path / "llama", config, tokenizer, qbench_attention="softpick")
    ckpt = load_model(folder, device="cuda")
    x, mask = (t.cuda() for t in batch())
    mask[2] = 1                                  # the kernel takes right padding only
    keep = mask.bool()

    def run():
        ckpt.model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16), backend_log() as ran:
            logits = ckpt.model(x, attention_mask=mask).logits.float()
        logits[keep].logsumexp(-1).sum().backward()
        return logits.detach(), ckpt.model.model.layers[0].self_attn.q_proj.weight.grad.clone(), ran

    kernel, g_kernel, ran = run()
    assert len(ran) == 1 and next(iter(ran)).startswith("softpick:triton:")   # path + kernel configs
    monkeypatch.setenv("QBENCH_SOFTPICK_KERNEL", "0")
    reference, g_reference, ran = run()
    assert ran == {"softpick:reference"}
    assert (kernel[keep] - reference[keep]).abs().max() < 5e-2
    assert torch.allclose(g_kernel, g_reference, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("recipe", ["kv-sink", "kv-kivi", "attn-p8"])
def test_attention_side_quantizers_act_inside_transformers_models(recipe, tokenizer, tmp_path):
    """KV-cache and attention-map quantizers on a transformers Llama loaded by qbench (its attention
    modules carry attn_quant as qbench's own do): the report proves they acted, the logits move."""
    from qbench.quant import quantize

    folder = save_hf(tmp_path / "llama", CONFIGS["llama"](), tokenizer)
    model = load_model(folder).model
    assert all(m.attn_quant is None for _, m in attention_modules(model))
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
    report = quantize(model, recipe, None, calib=None)
    measured = report.to_dict()["extra"]
    assert measured and "error" in json.dumps(measured), measured
    with torch.no_grad(), backend_log() as ran:
        after = model(ids).logits
    assert not torch.equal(before, after)
    assert ran == ({"softmax:maps"} if recipe.startswith("attn") else {"softmax:sdpa"})
