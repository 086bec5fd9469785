"""The fast scorer equals lm-eval's own HFLM (fp32, CPU) and does not depend on batching."""
import random

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from qbench.eval import TokenizerError
from qbench.eval.adapter import QBenchLM
from qbench.model import load_checkpoint

TOL = 1e-4          # per request; rolling requests sum hundreds of float32 log-probs in HFLM,
RTOL_ROLLING = 1e-6  # so there the tolerance also grows with the size of the total (float32 rounding)
WORDS = ("the quick brown fox jumps over lazy dog bird in hand worth two bush beginning was word God best "
         "times It A In").split()


def _sent(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _requests(seed=0):
    rng = random.Random(seed)
    ll = []
    for q in range(12):
        ctx = _sent(rng, rng.randint(1, 25)) + rng.choice(["", " ", ":", "\n", "  "])
        for _ in range(3):
            ll.append(Instance("loglikelihood", {}, (ctx, " " + _sent(rng, rng.randint(1, 4))), q))
        ll.append(Instance("loglikelihood", {}, (ctx, " fox"), q))
        ll.append(Instance("loglikelihood", {}, (ctx, " fox"), q))      # duplicate
    ll.append(Instance("loglikelihood", {}, ("", "the fox"), 90))         # empty context: prefix token
    ll.append(Instance("loglikelihood", {}, ("<s>the dog", " was"), 91))  # context starting with bos
    ll.append(Instance("loglikelihood", {}, (_sent(rng, 70), " the end of it"), 92))  # longer than max_length
    rolling = [Instance("loglikelihood_rolling", {}, (_sent(rng, rng.randint(1, 90)),), i) for i in range(6)]
    return ll, rolling


def _llama(tokenizer):
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
                                   eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _bos_tokenizer(tokenizer):
    """A copy that prepends <s> to every encoding, as Llama tokenizers do."""
    import copy

    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tokenizer)
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", tok.bos_token_id)])
    assert tok("a b")["input_ids"][0] == tok.bos_token_id
    return tok


@pytest.fixture(scope="module", params=["softmax", "softpick", "llama", "llama-bos"])
def model_and_tokenizer(request, tmp_path_factory, tokenizer):
    if request.param == "llama":   # any transformers causal LM (this one takes logits_to_keep)
        return _llama(tokenizer), tokenizer
    if request.param == "llama-bos":
        return _llama(tokenizer), _bos_tokenizer(tokenizer)
    from conftest import save_tiny

    folder = save_tiny(tmp_path_factory.mktemp(request.param) / "m", request.param, tokenizer,
                       max_position_embeddings=64)
    ckpt = load_checkpoint(folder)
    return ckpt.model, ckpt.tokenizer


@pytest.fixture(scope="module")
def reference(model_and_tokenizer):
    model, tok = model_and_tokenizer
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=5, device="cpu")
    ll, rolling = _requests()
    return hf, hf.loglikelihood(ll, disable_tqdm=True), hf.loglikelihood_rolling(rolling, disable_tqdm=True)


def _check(ref_ll, ref_roll, got_ll, got_roll):
    assert len(got_ll) == len(ref_ll) and len(got_roll) == len(ref_roll)
    for (a, ga), (b, gb) in zip(got_ll, ref_ll):
        assert abs(a - b) <= TOL, (a, b)
        assert ga == gb
    for a, b in zip(got_roll, ref_roll):
        assert abs(a - b) <= TOL + RTOL_ROLLING * abs(b), (a, b)


@pytest.mark.parametrize("max_batch_tokens,batch_size,gather,share", [
    (1, None, True, True), (150, None, True, True), (100_000, 3, True, True), (100_000, None, True, True),
    (150, None, False, True), (150, None, True, False)])
def test_matches_hflm_at_any_batching(model_and_tokenizer, reference, max_batch_tokens, batch_size, gather, share):
    model, tok = model_and_tokenizer
    _, ref_ll, ref_roll = reference
    lm = QBenchLM(pretrained=model, tokenizer=tok, max_batch_tokens=max_batch_tokens, batch_size=batch_size,
                  gather_in_head=gather, share_contexts=share)
    ll, rolling = _requests()
    _check(ref_ll, ref_roll, lm.loglikelihood(ll), lm.loglikelihood_rolling(rolling))
    assert lm._gather_in_head == gather   # the output layer ran on the scored positions only (or not asked to)
    # qbench's models run each context's answer choices as one row (transformers' models: plain rows)
    assert (lm.stats["shared_context_rows"] > 0) == (share and hasattr(model.config, "attention_kind"))
    # duplicates and one-token continuations that share a context are not run twice
    assert lm.stats["forward_rows"] < lm.stats["requests"]


def test_no_shared_rows_under_attention_quantizers(model_and_tokenizer, reference):
    """A KV-cache quantizer groups keys along the sequence: in a shared row one answer's keys would
    change another's quantization, so such a model scores plain rows (and still matches itself)."""
    model, tok = model_and_tokenizer
    if not hasattr(model.config, "attention_kind"):
        pytest.skip("transformers' models never share rows")
    attn = next(m for m in model.modules() if hasattr(m, "attn_quant"))
    attn.attn_quant = type("Identity", (), {"k": None, "v": None, "needs_maps": False})()
    try:
        lm = QBenchLM(pretrained=model, tokenizer=tok, max_batch_tokens=150)
        ll, rolling = _requests()
        _check(*reference[1:], lm.loglikelihood(ll), lm.loglikelihood_rolling(rolling))
        assert lm.stats["shared_context_rows"] == 0
    finally:
        attn.attn_quant = None


def test_tokenization_is_hflms(model_and_tokenizer, reference):
    model, tok = model_and_tokenizer
    hf = reference[0]
    lm = QBenchLM(pretrained=model, tokenizer=tok)
    ll, rolling = _requests()
    args = [r.args for r in ll]
    expected = []
    for ctx, cont in args:   # TemplateLM.loglikelihood's own encoding
        if ctx == "":
            c = hf.tok_encode(cont, add_special_tokens=False)
            expected.append(([hf.prefix_token_id], c) if hf.prefix_token_id != c[0] else (c[:1], c[1:]))
        else:
            expected.append(hf._encode_pair(ctx, cont))
    assert [(c, d) for _, c, d in lm.encode_requests(args)] == [(list(c), list(d)) for c, d in expected]
    strings = [r.args[0] for r in rolling] + ["<s>starts with bos"]
    assert lm._encode_many(strings) == [hf.tok_encode(s) for s in strings]


def test_greedy_flag(model_and_tokenizer, reference):
    """Continuations that are the model's own argmax tokens are flagged greedy, as by HFLM."""
    model, tok = model_and_tokenizer
    hf = reference[0]
    reqs = []
    rng = random.Random(1)
    for n in (3, 7, 12):
        ctx = [tok.bos_token_id] + [rng.randrange(3, len(tok)) for _ in range(n)]
        seq = list(ctx)
        with torch.no_grad():
            for _ in range(3):
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
        reqs.append((None, ctx, seq[len(ctx):]))                   # greedy
        reqs.append((None, ctx, seq[len(ctx):-1] + [(seq[-1] + 1) % len(tok)]))  # last token not greedy
    ref = hf._loglikelihood_tokens(reqs, disable_tqdm=True)
    lm = QBenchLM(pretrained=model, tokenizer=tok, max_batch_tokens=40)
    got = lm._loglikelihood_tokens(reqs)
    assert [g for _, g in ref] == [True, False] * 3
    assert [g for _, g in got] == [g for _, g in ref]
    assert all(abs(a - b) <= TOL for (a, _), (b, _) in zip(got, ref))


def test_tokenizer_without_bos_and_eos_is_a_clear_error(model_and_tokenizer):
    model, tok = model_and_tokenizer
    import copy

    bare = copy.deepcopy(tok)
    bare.bos_token = None
    bare.eos_token = None
    with pytest.raises(TokenizerError, match="neither a bos nor an eos"):
        QBenchLM(pretrained=model, tokenizer=bare)
