"""Quick CUDA check of the softpick kernel on a training-shaped input (forward and backward vs the
float32 torch reference). Exit code 1 on a mismatch, so a training run can fall back to the reference.

    python -m qbench.bench.kernel_smoke
"""
import sys

import torch

from qbench.attention import softpick_reference
from qbench.attention.triton_softpick import is_available, softpick_attention


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> int:
    if not is_available():
        print("kernel unavailable (no CUDA or triton)")
        return 1
    torch.manual_seed(0)
    shape = (8, 4, 512, 64)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    ours = softpick_attention(q, k, v)
    grads = torch.autograd.grad(ours, (q, k, v), do)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = softpick_reference(q32, k32, v32)
    ref_grads = torch.autograd.grad(ref, (q32, k32, v32), do.float())
    errors = {"out": rel(ours, ref), **{f"d{n}": rel(g, r) for n, g, r in zip("qkv", grads, ref_grads)}}
    ok = all(e < 2e-2 for e in errors.values()) and all(torch.isfinite(g).all() for g in grads)
    print("kernel smoke (bf16, B8 H4 T512 D64) relative errors:",
          ", ".join(f"{n} {e:.2e}" for n, e in errors.items()), "->", "OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
