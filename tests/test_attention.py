import math

import pytest
import torch

from qbench.attention import attend, backend_log, kinds, right_padded_lengths, softpick, softpick_reference


def softpick_float64(x: torch.Tensor) -> torch.Tensor:
    """The defining formula, in float64, with -inf entries contributing to neither sum."""
    x = x.double()
    e = torch.where(torch.isinf(x), torch.zeros_like(x), torch.expm1(x))
    return torch.relu(e) / e.abs().sum(-1, keepdim=True).clamp_min(1e-300)


@pytest.mark.parametrize("scale", [1.0, 10.0, 80.0])
def test_softpick_matches_float64_formula(scale):
    g = torch.Generator().manual_seed(int(scale))
    x = torch.randn(64, 50, generator=g) * scale
    x[::5, 10:] = float("-inf")                       # masked entries
    x[1] = -torch.rand(50, generator=g) * scale       # a row with all scores <= 0
    valid = ~torch.isinf(x)
    got = softpick(x.masked_fill(~valid, 0.0), valid, eps=0.0).double()
    want = softpick_float64(x)
    assert torch.isfinite(got).all()
    assert torch.equal(got[1], torch.zeros(50, dtype=torch.float64))
    assert (got - want).abs().max() < 1e-5 * max(1.0, want.abs().max())
    with_eps = softpick(x.masked_fill(~valid, 0.0), valid)
    assert (with_eps.double() - want).abs().max() < 1e-4


def test_softpick_extreme_magnitudes_no_overflow():
    x = torch.tensor([[80.0, 79.0, -80.0, 0.0], [-80.0, -79.0, -1.0, 0.0], [88.0, 100.0, 0.5, -200.0]])
    y = softpick(x)
    assert torch.isfinite(y).all()
    assert torch.equal(y[1], torch.zeros(4))
    assert torch.allclose(y.double(), softpick_float64(x), atol=1e-6)


def test_softpick_gradients_flow_and_match_float64():
    x = (torch.randn(8, 20, dtype=torch.float64) * 3).requires_grad_()
    x32 = x.detach().float().requires_grad_()
    weights = torch.randn(8, 20, dtype=torch.float64)
    (softpick(x32, eps=0.0).double() * weights).sum().backward()
    (softpick_float64(x) * weights).sum().backward()
    assert torch.isfinite(x32.grad).all() and x32.grad.abs().sum() > 0
    assert torch.allclose(x32.grad.double(), x.grad, atol=1e-4)


def test_masked_rows_give_zero_not_nan():
    q = torch.randn(1, 2, 5, 8)
    k = torch.randn(1, 2, 5, 8)
    v = torch.randn(1, 2, 5, 8)
    mask = torch.tensor([[0, 0, 1, 1, 1]])  # left padding: first queries see no key
    out, w = attend(q, k, v, "softpick", mask, need_weights=True)
    assert torch.isfinite(out).all() and torch.equal(w[0, :, :2], torch.zeros(2, 2, 5))
    out, w = attend(q, k, v, "softmax", mask, need_weights=True)
    assert torch.isfinite(out).all()


def test_softpick_attention_matches_explicit_float64():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    kk, vv = k.repeat_interleave(2, 1).double(), v.repeat_interleave(2, 1).double()
    scores = q.double() @ kk.transpose(-1, -2) / math.sqrt(16)
    scores = scores.masked_fill(~torch.ones(9, 9, dtype=torch.bool).tril(), float("-inf"))
    want = softpick_float64(scores) @ vv
    assert (softpick_reference(q, k, v, eps=0.0).double() - want).abs().max() < 1e-5


def test_right_padding_detection():
    assert right_padded_lengths(torch.tensor([[1, 1, 0], [1, 1, 1]])).tolist() == [2, 3]
    assert right_padded_lengths(torch.tensor([[0, 1, 1]])) is None


def test_unknown_kind():
    with pytest.raises(kinds.AttentionError, match="unknown attention kind 'linear'; expected one of softmax"):
        attend(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4), "linear")


def test_quantized_activation_tensors_become_plain_for_the_kernel():
    """quanto's activation quantizers hand attention an ActivationQBytesTensor as v; the Triton
    kernel would read its int8 storage as values (a CUDA illegal memory access on an H200)."""
    from optimum.quanto import qint8
    from optimum.quanto.tensor import quantize_activation

    from qbench.attention import plain_tensor
    from qbench.attention.triton_softpick import _check

    v = torch.randn(1, 2, 8, 32)
    qv = quantize_activation(v, qtype=qint8, scale=v.abs().max() / 127)
    assert type(qv) is not torch.Tensor
    with pytest.raises(TypeError, match="plain tensors"):
        _check(v, v, qv)
    plain = plain_tensor(qv)
    assert type(plain) is torch.Tensor and torch.allclose(plain, v, atol=v.abs().max().item() / 100)
    assert plain_tensor(v) is v


# --------------------------------------------------------------------------- every kind of the registry
def float64_formula(kind: str, x: torch.Tensor) -> torch.Tensor:
    """The defining formula of each kind in float64, written independently of reference.py;
    -inf entries are masked (they count in no sum); a row with nothing left is zero."""
    x = x.double()
    if kind == "softpick":
        return softpick_float64(x)
    if kind == "softmax1":
        return torch.exp(x) / (1.0 + torch.exp(x).sum(-1, keepdim=True))
    if kind == "rectified":
        x = torch.where(x >= 0, x, torch.full_like(x, float("-inf")))
    return torch.nan_to_num(torch.softmax(x, dim=-1), nan=0.0)   # softmax and rectified


ALL_KINDS = list(kinds.KINDS)


def test_registry_lists_the_four_kinds_with_paper_format_names():
    assert ALL_KINDS[:4] == ["softmax", "softpick", "softmax1", "rectified"]
    assert kinds.kind_of_attn_impl("parallel_attn") == "softmax"
    assert kinds.kind_of_attn_impl("parallel_softpick_attn") == "softpick"
    assert kinds.kind_of_attn_impl("parallel_rectified_attn") == "rectified"
    assert {kinds.attn_impl_of(k) for k in ALL_KINDS} == set(kinds.ATTN_IMPLS)
    with pytest.raises(kinds.AttentionError, match="parallel_linear_attn"):
        kinds.kind_of_attn_impl("parallel_linear_attn")
    with pytest.raises(kinds.AttentionError, match="twice"):
        kinds.register(kinds.KINDS["softmax"])


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("scale", [1.0, 10.0, 80.0])
def test_every_kind_matches_its_float64_formula(kind, scale):
    g = torch.Generator().manual_seed(int(scale))
    x = torch.randn(64, 50, generator=g) * scale
    x[::5, 10:] = float("-inf")                       # masked entries
    x[1] = -torch.rand(50, generator=g) * scale       # a row with all scores <= 0
    x[2] = float("-inf")                              # an all-masked row
    valid = ~torch.isinf(x)
    normalise = kinds.get(kind).normalise
    got = normalise(x.masked_fill(~valid, 0.0), valid).double()
    want = float64_formula(kind, x)
    assert torch.isfinite(got).all()
    assert torch.equal(got[2], torch.zeros(50, dtype=torch.float64))      # nothing to attend to
    assert torch.all(got[~valid] == 0)                                     # masked entries get nothing
    tol = 1e-4 if kind == "softpick" else 1e-6                             # softpick's eps = 1e-6
    assert (got - want).abs().max() < tol
    assert torch.all(got.sum(-1) <= 1 + 1e-5)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_kind_survives_huge_scores(kind):
    """No overflow or NaN for scores far beyond exp's float32 range (+-1e4)."""
    x = torch.tensor([[1e4, 9e3, -1e4, 0.0], [-1e4, -9e3, -1.0, -0.5], [88.0, 100.0, 0.5, -200.0]])
    y = kinds.get(kind).normalise(x, None)
    assert torch.isfinite(y).all()
    if kind in ("softpick", "rectified"):
        assert torch.equal(y[1], torch.zeros(4))          # all scores negative: an empty row
    big = x[2:].double()
    assert torch.allclose(y[2:].double(), float64_formula(kind, big), atol=1e-6)
    assert y[0, 0] == pytest.approx(1.0, abs=1e-6)       # the largest score takes everything


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_kind_has_float64_gradients(kind):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 20, generator=g, dtype=torch.float64) * 3
    x[:, 15:] = float("-inf")
    valid = ~torch.isinf(x)
    x64 = x.clone().requires_grad_()
    x32 = x.masked_fill(~valid, 0.0).float().requires_grad_()
    weights = torch.randn(8, 20, generator=g, dtype=torch.float64)
    normalise = kinds.get(kind).normalise
    (normalise(x32, valid).double() * weights).sum().backward()
    (float64_formula(kind, x64) * weights).sum().backward()
    want = torch.where(valid, x64.grad, torch.zeros_like(x64.grad))
    assert torch.isfinite(x32.grad).all() and x32.grad.abs().sum() > 0
    assert torch.all(x32.grad[~valid] == 0)
    assert torch.allclose(x32.grad.double(), want, atol=1e-4 if kind == "softpick" else 1e-6)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_kind_attention_equals_float64_and_padding_changes_nothing(kind):
    torch.manual_seed(0)
    b, h, hkv, t, d = 3, 4, 2, 11, 16
    q, k, v = torch.randn(b, h, t, d) * 2, torch.randn(b, hkv, t, d) * 2, torch.randn(b, hkv, t, d)
    kk, vv = k.repeat_interleave(2, 1).double(), v.repeat_interleave(2, 1).double()
    scores = q.double() @ kk.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    want = float64_formula(kind, scores) @ vv
    out, _ = attend(q, k, v, kind)
    maps_out, w = attend(q, k, v, kind, need_weights=True)
    tol = 1e-4 if kind == "softpick" else 1e-5
    assert (out.double() - want).abs().max() < tol and (maps_out.double() - want).abs().max() < tol
    assert torch.all(w.triu(1) == 0)                                       # causal
    # a right-padded and a left-padded batch: the real tokens get what they get alone
    lengths = [11, 7, 4]
    for side in ("right", "left"):
        key_mask = torch.zeros(b, t, dtype=torch.long)
        for i, n in enumerate(lengths):
            if side == "right":
                key_mask[i, :n] = 1
            else:
                key_mask[i, t - n:] = 1
        padded, _ = attend(q, k, v, kind, key_mask)
        padded_maps, pw = attend(q, k, v, kind, key_mask, need_weights=True)
        assert torch.isfinite(padded).all() and torch.isfinite(pw).all()
        for i, n in enumerate(lengths):
            sl = slice(0, n) if side == "right" else slice(t - n, t)
            alone, _ = attend(q[i:i + 1, :, sl], k[i:i + 1, :, sl], v[i:i + 1, :, sl], kind)
            assert (padded[i, :, sl] - alone[0]).abs().max() < 1e-5
            assert (padded_maps[i, :, sl] - alone[0]).abs().max() < 1e-5
            assert torch.all(pw[i, :, :, key_mask[i] == 0] == 0)            # padding gets no weight
        if side == "left":                                                 # queries that see nothing: zero
            assert torch.all(pw[2, :, :t - 4] == 0) and torch.all(padded_maps[2, :, :t - 4] == 0)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_kind_takes_a_4d_mask_and_a_scale(kind):
    """transformers' masks: a plain causal one is reduced to the fast path; a sliding window (or a
    KV cache: fewer queries than keys) runs the reference with exactly that mask; scale multiplies."""
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 2, 9, 8), torch.randn(2, 1, 9, 8), torch.randn(2, 1, 9, 8)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()[None, None].expand(2, 1, 9, 9)
    with backend_log() as ran:
        a, _ = attend(q, k, v, kind, mask=causal)
    b, _ = attend(q, k, v, kind)
    assert torch.equal(a, b) and ran == {f"{kind}:{'sdpa' if kind == 'softmax' else 'reference'}"}
    window = causal & ~torch.ones(9, 9, dtype=torch.bool).tril(-3)[None, None]    # keys i-2..i
    sw, w = attend(q, k, v, kind, mask=window, need_weights=True)
    assert torch.all(w[..., ~window[0, 0]] == 0)
    kk, vv = k.expand(2, 2, 9, 8).double(), v.expand(2, 2, 9, 8).double()
    scores = (q.double() @ kk.transpose(-1, -2) * 0.3).masked_fill(~window, float("-inf"))
    want = float64_formula(kind, scores) @ vv
    got, _ = attend(q, k, v, kind, mask=window, scale=0.3)
    assert (got.double() - want).abs().max() < 1e-4
    cached, _ = attend(q[:, :, -2:], k, v, kind)                          # 2 new queries over 9 keys
    assert (cached - b[:, :, -2:]).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_kind_runs_the_maps_path_with_score_and_prob_quantizers(kind):
    class Quant:
        needs_maps = True
        k = v = None

        @staticmethod
        def scores(s):
            return torch.round(s * 4) / 4

        @staticmethod
        def probs(p):
            return torch.round(p * 16) / 16

    torch.manual_seed(2)
    q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    with backend_log() as ran:
        out, _ = attend(q, k, v, kind, quant=Quant())
    assert ran == {f"{kind}:maps"}
    scores = torch.round((q @ k.transpose(-1, -2) / math.sqrt(8)) * 4) / 4
    scores = scores.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
    probs = torch.round(float64_formula(kind, scores) * 16) / 16
    assert torch.allclose(out.double(), probs @ v.double(), atol=1e-5)
    plain, _ = attend(q, k, v, kind)
    assert not torch.allclose(out, plain)                                  # the quantizers acted


def test_a_mask_changed_in_place_is_looked_at_again():
    """attend() remembers whether the last 4D mask was the plain causal one (one device wait per
    forward); a mask changed in place must be examined afresh."""
    from qbench.attention import attend, visible_mask

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    mask = visible_mask(5, 5, None, q.device).expand(1, 1, 5, 5).clone()
    causal, _ = attend(q, k, v, "softmax", mask=mask)
    mask[0, 0, 4, 0] = False           # the last query no longer sees the first key
    changed, _ = attend(q, k, v, "softmax", mask=mask)
    fresh, _ = attend(q, k, v, "softmax", mask=mask.clone())
    assert torch.equal(changed, fresh) and not torch.equal(changed, causal)
    with torch.inference_mode():   # inference tensors have no version counter: examined every time
        inf_mask = visible_mask(5, 5, None, q.device).expand(1, 1, 5, 5).clone()
        inf_causal, _ = attend(q, k, v, "softmax", mask=inf_mask)
        inf_mask[0, 0, 4, 0] = False
        inf_changed, _ = attend(q, k, v, "softmax", mask=inf_mask)
    assert torch.equal(inf_causal, causal) and torch.equal(inf_changed, fresh)
