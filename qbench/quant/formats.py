"""Number grids for fake quantization (integer, FP8 E4M3, MXFP4, NVFP4) and the weight methods
fp8, mxfp4 and nvfp4. Every function returns float32 values on the grid; callers cast back.

Integer (activations, KV cache, attention scores), reduced over `dim` (one scale per slice):
- int_symmetric: s = absmax / (2^(b-1) - 1), x_q = clamp(round(x / s), -2^(b-1), 2^(b-1) - 1) * s;
- int_minmax (KIVI's asymmetric grid): s = (max - min) / (2^b - 1),
  x_q = clamp(round((x - min) / s), 0, 2^b - 1) * s + min.
  s = 1 where the slice is constant (absmax = 0, max = min). round = torch.round (half to even).
FP8 E4M3 (torch.float8_e4m3fn: 4 exponent bits, 3 mantissa bits, largest value 448):
  s = absmax / 448 over `dim` (s = 1 where absmax = 0), x_q = e4m3(clamp(x / s, -448, 448)) * s,
  e4m3() = torch's cast (round to nearest even). Written here; bit-identical to torchao's float8
  primitives (_choose_scale_float8, _quantize_affine_float8, _dequantize_affine_float8; tested),
  which give NaN for an all-zero slice.
MXFP4 (OCP Microscaling v1.0): blocks of 32 consecutive values along the last dim, one E8M0
  (power of two) scale 2^(floor(log2 absmax) - 2) per block (2: the exponent of FP4's largest
  value 6 = 1.5 * 2^2), elements FP4 E2M1 (0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives), round to
  nearest even, saturating at 6 (torchao's MXTensor.to_mx(x, float4_e2m1fn_x2, 32,
  ScaleCalculationMode.FLOOR), dequantized).
NVFP4: blocks of 16 values along the last dim, one FP8 E4M3 scale per block on top of one FP32
  scale per tensor g = absmax(x) / (448 * 6): block scale c = e4m3(clamp(absmax_block / 6 / g,
  2^-6, 448)), x_q = e2m1(clamp(x * ((1 / g) / c), -6, 6)) * (g * c) (torchao's
  NVFP4Tensor.to_nvfp4(x, 16, per_tensor_scale=g), dequantized).
MXFP4 and NVFP4 are written here in a few elementwise ops, bit-identical to torchao's (tested on
hand-computed examples and against torchao on random tensors): torchao's tensors pack and
unpack 4-bit codes on every call, about 100 times the cost of an int8 grid on the CPU, which made
a cell with MXFP4 activations evaluate 8 times slower than full precision.
torchao prints warnings when imported on a CPU-only machine (CUDA extensions it cannot load);
torchao_module silences them (and quiet_torchao_import, called first at qbench import); qbench
uses torchao for the Hadamard matrices of rotation.py.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import logging

import torch

from .base import LayerwiseMethod, Field, MethodUnavailable, register

FP8_MAX = 448.0
E4M3_TINY = torch.finfo(torch.float8_e4m3fn).tiny   # 2^-6, the smallest normal E4M3 value
MX_BLOCK, NV_BLOCK = 32, 16
BLOCK = {"mxfp4": MX_BLOCK, "nvfp4": NV_BLOCK}     # block length along the last dim
WIDTH = {"fp8": 8, "mxfp4": 4, "nvfp4": 4}         # element bits of each float format
LABEL = {"fp8": "FP8", "mxfp4": "MXFP4", "nvfp4": "NVFP4"}


@contextlib.contextmanager
def _quiet():
    """No log records below ERROR and no stdout for the block (logging.disable: torch resets
    its loggers' levels while torchao imports torch._dynamo)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def torchao_module(name: str):
    """Imports a torchao module with its import-time noise silenced (warnings about CUDA
    extensions that do not load on CPU, a deprecation note from torch's pytree, a print about a
    slow Hadamard transform). Raises MethodUnavailable if torchao is missing or fails."""
    try:
        with _quiet():
            return importlib.import_module(name)
    except Exception as e:  # pragma: no cover - depends on the environment
        raise MethodUnavailable(f"torchao is needed here: cannot import {name}: {e}") from e


def quiet_torchao_import() -> None:
    """Imports torchao and its mx_formats (if installed) silently. transformers imports them
    when qbench.model loads it; calling this first in qbench/__init__.py keeps qbench quiet."""
    try:
        torchao_module("torchao.prototype.mx_formats")
    except MethodUnavailable:  # pragma: no cover - depends on the environment
        pass


def _nonzero(s: torch.Tensor) -> torch.Tensor:
    return torch.where(s == 0, torch.ones_like(s), s)


def _amax(x: torch.Tensor, dim) -> torch.Tensor:
    return x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)


def int_symmetric(x: torch.Tensor, bits: int, dim=-1) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    x = x.float()
    s = _nonzero(_amax(x, dim) / qmax)
    return torch.clamp(torch.round(x / s), -qmax - 1, qmax) * s


def int_minmax(x: torch.Tensor, bits: int, dim=-1) -> torch.Tensor:
    qmax = 2 ** bits - 1
    x = x.float()
    lo, hi = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    s = _nonzero((hi - lo) / qmax)
    return torch.clamp(torch.round((x - lo) / s), 0, qmax) * s + lo


def fp8_e4m3(x: torch.Tensor, dim=-1) -> torch.Tensor:
    """`dim`: the dims one scale covers (None: the whole tensor)."""
    x = x.float()
    s = _nonzero(_amax(x, dim) / FP8_MAX)
    return torch.clamp(x / s, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * s


def e2m1(y: torch.Tensor) -> torch.Tensor:
    """y (float32) rounded to FP4 E2M1 (0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives), to nearest,
    ties to the even mantissa, saturating at 6: the grid's spacing is 0.5 below 2, 1 below 4 and
    2 above, and even multiples of the spacing have an even mantissa."""
    a = y.abs()
    step = (a >= 2).float().add_((a >= 4).float()).exp2_().mul_(0.5)     # 0.5, 1 or 2 (in place: fast)
    return a.div_(step).round_().mul_(step).clamp_(max=6.0).copysign_(y)


def mxfp4(x: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    xb = x.float().reshape(-1, MX_BLOCK)
    amax = xb.abs().amax(dim=-1, keepdim=True)
    pow2 = ((amax.view(torch.int32) >> 23) & 0xFF) - 127          # floor(log2 absmax), from the exponent bits
    e = (pow2 - 2).clamp(-127, 127)                                # E8M0 scale exponent
    scale = ((e.clamp(min=-126) + 127) << 23).view(torch.float32)  # 2^e (at least 2^-126, as torchao)
    return (e2m1(xb / scale) * torch.where(e < -126, scale * 0.5, scale)).reshape(shape)


def nvfp4(x: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    xb = x.float().reshape(-1, NV_BLOCK)
    g = _nonzero(xb.abs().amax() / (FP8_MAX * 6.0))               # the per-tensor FP32 scale (no sync)
    block = xb.abs().amax(dim=-1, keepdim=True) / 6.0
    c = torch.clamp(block / g, min=E4M3_TINY, max=FP8_MAX).to(torch.float8_e4m3fn).float()
    return (e2m1(torch.clamp(xb * ((1.0 / g) / c), -6.0, 6.0)) * (g * c)).reshape(shape)


def fake_quant_format(x: torch.Tensor, fmt: str, dim=-1) -> torch.Tensor:
    """A float format's grid (fp8: one scale over `dim`; mxfp4/nvfp4: their blocks along the
    last dim), float32."""
    if fmt == "fp8":
        return fp8_e4m3(x, dim)
    return mxfp4(x) if fmt == "mxfp4" else nvfp4(x)


# --------------------------------------------------------------------------- weight methods
class FormatMethod(LayerwiseMethod):
    """Weights fake-quantized in place on a float format's grid (stay nn.Linear); `name` is
    the format."""

    group_size_field = "method"   # the block size is the format's, not a field

    @property
    def format(self) -> str:
        return self.name

    def weight_token(self, recipe, bits):
        return LABEL[self.format]

    def group_size(self, recipe, bits):
        return BLOCK.get(self.format)

    def scale_dims(self, recipe):
        return -1

    @torch.no_grad()
    def quantize_layer(self, linear, recipe, bits):
        w = linear.weight
        w.data.copy_(fake_quant_format(w.data, self.format, self.scale_dims(recipe)).to(w.dtype))
        return linear

    def dequantize(self, module):
        return module.weight


def torchao_version() -> str:
    from importlib.metadata import version

    return version("torchao")


@register
class FP8(FormatMethod):
    """FP8 E4M3 weights, one FP32 scale per output channel (row) or per tensor.
    Bits per weight: 8 + 32 / (elements per scale)."""

    name = "fp8"
    bits = (8,)
    weight_fields = {"granularity": Field(str, default="per_channel", choices=("per_channel", "per_tensor"),
                                          doc="one scale per output channel, or one per tensor")}

    def group_size(self, recipe, bits):
        return None

    def scale_dims(self, recipe):
        return -1 if recipe.weight["granularity"] == "per_channel" else None

    def bits_per_weight(self, module, recipe, bits):
        per = module.in_features if recipe.weight["granularity"] == "per_channel" else module.weight.numel()
        return 8 + 32 / per


@register
class MXFP4(FormatMethod):
    """MXFP4 weights: FP4 E2M1 in blocks of 32 input columns with an E8M0 scale (4.25 bits)."""

    name = "mxfp4"
    bits = (4,)

    def bits_per_weight(self, module, recipe, bits):
        return 4 + 8 / MX_BLOCK


@register
class NVFP4(FormatMethod):
    """NVFP4 weights: FP4 E2M1 in blocks of 16 input columns with an FP8 E4M3 scale, plus one
    FP32 scale per tensor (4.5 bits and 32 per tensor)."""

    name = "nvfp4"
    bits = (4,)

    def bits_per_weight(self, module, recipe, bits):
        return 4 + 8 / NV_BLOCK + 32 / module.weight.numel()
