"""The number grids of qbench.quant.formats, bit-exactly on hand-computed examples (torch.round
and the float casts round half to even), and FP8 against torchao's float8 primitives."""
import pytest
import torch

from qbench.quant import formats


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_int_symmetric_hand_example():
    # 3 bits: qmax 3, s = absmax / 3 = 1; 0.5 rounds to 0 (half to even); an all-zero row stays 0
    x = t([[1.0, -2.0, 0.5, 3.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(formats.int_symmetric(x, 3), t([[1.0, -2.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]]))
    # per tensor (dim None): s = 6 / 3 = 2 -> levels round(x / 2) = [0, -1, 0, 2 | 3, 0, 0, -1]
    x = t([[1.0, -2.0, 0.5, 3.0], [6.0, 0.0, 0.0, -2.5]])
    assert torch.equal(formats.int_symmetric(x, 3, None), t([[0.0, -2.0, 0.0, 4.0], [6.0, 0.0, 0.0, -2.0]]))


def test_int_minmax_hand_example():
    # 2 bits: s = (max - min) / 3; row 1: s = 1, 2.5 -> 2 (half to even); row 2: min -1, s = 1
    x = t([[0.0, 1.0, 2.5, 3.0], [-1.0, -0.2, 0.6, 2.0], [4.0, 4.0, 4.0, 4.0]])
    want = t([[0.0, 1.0, 2.0, 3.0], [-1.0, 0.0, 1.0, 2.0], [4.0, 4.0, 4.0, 4.0]])
    assert torch.equal(formats.int_minmax(x, 2), want)


def test_fp8_e4m3_hand_example():
    # s = absmax / 448: 1 for row 1, 2 for row 2. E4M3 near 0.3: 0.28125, 0.3125 -> 0.3125;
    # 17 lies halfway between 16 and 18 -> 16 (even mantissa)
    x = t([[448.0, 1.0, 0.3, -17.0], [896.0, 2.0, 0.6, -34.0]])
    want = t([[448.0, 1.0, 0.3125, -16.0], [896.0, 2.0, 0.625, -32.0]])
    assert torch.equal(formats.fp8_e4m3(x), want)
    assert torch.equal(formats.fp8_e4m3(t([[0.0, 0.0]])), t([[0.0, 0.0]]))   # no NaN for a zero row


@pytest.mark.parametrize("dims", ["row", "tensor"])
def test_fp8_matches_torchao(dims):
    qp = formats.torchao_module("torchao.quantization.quant_primitives")
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(0)) * 3
    block = [1, 64] if dims == "row" else [16, 64]
    scale = qp._choose_scale_float8(x, block, torch.float8_e4m3fn)
    ref = qp._dequantize_affine_float8(qp._quantize_affine_float8(x, scale, torch.float8_e4m3fn), scale)
    assert torch.equal(formats.fp8_e4m3(x, -1 if dims == "row" else None), ref)


def test_mxfp4_hand_example():
    # blocks of 32, scale 2^(floor(log2 absmax) - 2); FP4 E2M1 values 0 .5 1 1.5 2 3 4 6
    b1 = [5.0, 0.25, 0.75, 1.25, 2.5, 3.5, -4.9, 0.1]     # absmax 5: scale 1; ties to even mantissa
    w1 = [4.0, 0.0, 1.0, 1.0, 2.0, 4.0, -4.0, 0.0]
    b2 = [0.75, 0.0625, -0.375, 0.3]                        # absmax 0.75: scale 2^-3; 0.3/0.125 = 2.4 -> 2
    w2 = [0.75, 0.0625, -0.375, 0.25]
    b3 = [7.0, 1.0]                                         # absmax 7: scale 1; 7 saturates at 6
    w3 = [6.0, 1.0]
    pad = lambda v: v + [0.0] * (32 - len(v))   # noqa: E731
    x = t([pad(b1) + pad(b2) + pad(b3)])
    assert torch.equal(formats.mxfp4(x), t([pad(w1) + pad(w2) + pad(w3)]))


def test_nvfp4_hand_example():
    # per-tensor g = absmax / (448 * 6) = 2688 / 2688 = 1; block scale e4m3(block absmax / 6 / g)
    b1, w1 = [2688.0, 1344.0], [2688.0, 1344.0]             # scale 448: x / 448 = 6, 3
    b2, w2 = [6.0, 1.5, -0.75, 2.2], [6.0, 1.5, -1.0, 2.0]  # scale 1: -0.75 -> -1 (tie to even), 2.2 -> 2
    b3, w3 = [5.0, 1.0], [4.875, 0.8125]                    # scale e4m3(5/6) = 0.8125: 5 -> 6 * 0.8125
    pad = lambda v: v + [0.0] * (16 - len(v))   # noqa: E731
    x = t([pad(b1) + pad(b2) + pad(b3) + pad([])])
    assert torch.equal(formats.nvfp4(x), t([pad(w1) + pad(w2) + pad(w3) + pad([])]))


def _test_tensor(seed):
    """Random blocks over many magnitudes, with zero blocks, exact grid values and ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 128, generator=g) * torch.logspace(-3, 3, 48)[:, None]
    x[3] = 0
    x[5, :32] = torch.tensor([6.0, 5.0, 3.5, 2.5, 1.75, 1.25, 0.75, 0.25] * 4)
    return x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mxfp4_matches_torchao(seed):
    mx = formats.torchao_module("torchao.prototype.mx_formats.mx_tensor")
    cfg = formats.torchao_module("torchao.prototype.mx_formats.config")
    x = _test_tensor(seed)
    ref = mx.MXTensor.to_mx(x, torch.float4_e2m1fn_x2, 32, cfg.ScaleCalculationMode.FLOOR).dequantize(torch.float32)
    assert torch.equal(formats.mxfp4(x), ref)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nvfp4_matches_torchao(seed):
    nv = formats.torchao_module("torchao.prototype.mx_formats.nvfp4_tensor")
    x = _test_tensor(seed)
    g = nv.per_tensor_amax_to_scale(x.abs().amax())
    ref = nv.NVFP4Tensor.to_nvfp4(x, 16, per_tensor_scale=g).dequantize(torch.float32)
    assert torch.equal(formats.nvfp4(x), ref)


def test_formats_keep_shape_and_grid_sizes():
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(1))
    for fmt, levels in (("mxfp4", 15), ("nvfp4", 15)):
        q = formats.fake_quant_format(x, fmt)
        assert q.shape == x.shape and 0 < float((q - x).norm() / x.norm()) < 0.2
        # within one block, at most 15 distinct values (FP4 E2M1: +-{0.5..6} and 0)
        assert len(torch.unique(q[0, 0, :16])) <= levels


def test_all_zero_tensors_stay_zero():
    z = torch.zeros(2, 64)
    for fmt in ("fp8", "mxfp4", "nvfp4"):
        assert torch.equal(formats.fake_quant_format(z, fmt), z), fmt
