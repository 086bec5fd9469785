import math

import pytest
import torch

from qbench.attention import attend, right_padded_lengths, softpick, softpick_reference


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
    with pytest.raises(ValueError, match="unknown attention kind"):
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
