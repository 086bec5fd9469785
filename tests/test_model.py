import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from qbench.model import QBenchForCausalLM, new_model

# our name -> transformers Llama name
RENAMES = [("model.embeddings.", "model.embed_tokens."), (".attn_norm.", ".input_layernorm."),
           (".attn.", ".self_attn."), (".mlp_norm.", ".post_attention_layernorm.")]


def to_llama(model: QBenchForCausalLM) -> LlamaForCausalLM:
    c = model.config
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.mlp_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.kv_heads,
        rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=c.tie_word_embeddings,
        max_position_embeddings=c.max_position_embeddings, attention_bias=False, mlp_bias=False,
        attn_implementation="eager")).eval()
    state = {}
    for name, tensor in model.state_dict().items():
        for ours, theirs in RENAMES:
            name = name.replace(ours, theirs)
        state[name] = tensor
    missing, unexpected = llama.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return llama


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("tied", [False, True])
def test_logits_equal_transformers_llama(kv_heads, tied):
    model = new_model("softmax", seed=1, hidden_size=64, num_hidden_layers=3, num_heads=4, num_kv_heads=kv_heads,
                      vocab_size=97, tie_word_embeddings=tied, hidden_ratio=4)
    assert model.config.mlp_size == 256  # int(64*4*2/3)=170, rounded up to 256
    with torch.no_grad():  # make the norms non-trivial so they are checked too
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    llama = to_llama(model)
    x = torch.randint(0, 97, (3, 33))
    mask = torch.ones_like(x)
    mask[1, 20:] = 0  # right padding as lm-eval sends it
    with torch.no_grad():
        ours, theirs = model(x, attention_mask=mask).logits, llama(x, attention_mask=mask).logits
    keep = mask.bool()
    assert (ours[keep] - theirs[keep]).abs().max() < 1e-4


def test_intermediate_size_rule():
    assert new_model(hidden_size=1024, num_hidden_layers=1, num_heads=16, vocab_size=10).config.mlp_size == 2816
    assert new_model(hidden_size=64, num_hidden_layers=1, num_heads=4, vocab_size=10,
                     intermediate_size=96).config.mlp_size == 96


def test_save_reload_identical_and_auto_class(tmp_path, tokenizer):
    from qbench.model import save_checkpoint

    model = new_model("softpick", seed=3, hidden_size=64, num_hidden_layers=2, num_heads=4, vocab_size=300)
    save_checkpoint(model, tokenizer, tmp_path)
    import json
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "transformer" and config["attn_impl"] == "parallel_softpick_attn"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(reloaded, QBenchForCausalLM)
    x = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        assert torch.equal(model(x).logits, reloaded(x).logits)


def test_tied_embeddings_saved_once(tmp_path, tokenizer):
    from safetensors import safe_open

    from qbench.model import save_checkpoint
    save_checkpoint(new_model(hidden_size=64, num_hidden_layers=1, num_heads=4, vocab_size=300,
                              tie_word_embeddings=True), tokenizer, tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert "model.embeddings.weight" in names and "lm_head.weight" not in names
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embeddings.weight.data_ptr()


def test_output_attentions_and_padding_invariance():
    model = new_model("softpick", seed=2, hidden_size=64, num_hidden_layers=2, num_heads=4, vocab_size=50)
    x = torch.randint(0, 50, (1, 12))
    padded = torch.cat([x, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 12), torch.zeros(1, 5)], dim=1).long()
    with torch.no_grad():
        out = model(x, output_attentions=True)
        out_pad = model(padded, attention_mask=mask, output_attentions=True)
        plain = model(x).logits
    assert len(out.attentions) == 2 and out.attentions[0].shape == (1, 4, 12, 12)
    assert torch.allclose(out.logits, plain, atol=1e-5)  # weights path == fast path
    assert torch.allclose(out_pad.logits[:, :12], plain, atol=1e-5)
    assert torch.all(out.attentions[0].triu(1) == 0)  # causal
    assert torch.all(out.attentions[0].sum(-1) <= 1 + 1e-5)  # softpick rows sum to at most one


def test_unsupported_config_is_refused():
    with pytest.raises(ValueError, match="qk_norm"):
        new_model(hidden_size=64, num_hidden_layers=1, num_heads=4, vocab_size=10, qk_norm=True)
