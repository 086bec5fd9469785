"""Softpick attention as a flash-attention-style Triton kernel (forward and backward).

Causal self-attention, q [B, H, T, D], k and v [B, Hkv, T, D] (GQA: query head h reads kv head
h // (H // Hkv)), D in {32, 64, 128}, fp16/bf16 inputs (fp32 too: tf32 dots on a GPU) with fp32
accumulation, any T, optional right padding `seq_lens` (int [B]: keys at positions >= seq_lens[b]
are masked; query rows past it still get finite values). Memory is linear in T.

The math (see reference.py): with scores x_ij = q_i.k_j * scale over unmasked keys j,
    softpick(x)_ij = relu(e^{x_ij - m_i} - e^{-m_i}) / (sum_j |e^{x_ij - m_i} - e^{-m_i}| + eps)
for any shift m_i; we use m_i = max(0, max_j x_ij), found online: the running max starts at 0,
so e^{-m} <= 1 never overflows and a row whose scores are all <= 0 gives exact zeros. When the
running max grows from m_old to m_new, both running sums (relu(a) @ V and sum |a|) are scaled by
e^{m_old - m_new}, as online softmax does.

Masking trick: a masked score is set to 0 (not -inf). Since e^{0-m} - e^{-m} is exactly 0 in
floating point, a zero score contributes nothing to either sum, leaves m = max(0, ...) unchanged
and has zero gradient. Keys beyond seq_len (and beyond T) are therefore loaded as zero vectors,
which gives score 0 exactly: only diagonal blocks need an explicit (causal) mask.

Memory: no T x T buffer. Saved for the backward: q, k, v, O and L (one float per query row).

Everything is computed in the log2 domain (x2 = x * log2(e), exp2). The forward stores per row
    L_i = m_i + log2(Z_i),   Z_i = sum_j |a_ij| + eps   (a_ij = 2^{x2_ij - m_i} - 2^{-m_i})
so that the backward recomputes p_ij = relu(2^{x2_ij - L_i} - 2^{-L_i}) with one exp2.

Backward (derived in benchmarks/attention_notes.md): with E_ij = 2^{x2_ij - L_i} = e^{x_ij-m_i}/Z_i,
A_ij = E_ij - 2^{-L_i} (= a_ij / Z_i, same sign as a_ij), dp_ij = dO_i . v_j and
Delta_i = sum_j dp_ij p_ij = dO_i . O_i (exact for the first rows, see _bwd_preprocess):
    dL/dx_ij = E_ij * ( [A_ij > 0] dp_ij - sign(A_ij) Delta_i )
    dq = scale * dS @ K,  dk = scale * dS^T @ Q,  dv = P^T @ dO   (dk, dv summed over a GQA group)
"""
from __future__ import annotations

import contextlib
import math
import os

import torch

try:  # triton is optional: this module must import on machines without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None

__all__ = ["softpick_attention", "is_available", "SOFTPICK_EPS"]

SOFTPICK_EPS = 1e-6
LOG2E = 1.4426950408889634
HEAD_DIMS = (16, 32, 64, 128)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def is_available() -> bool:
    """True when the kernel can run here: triton is installed and a CUDA device is present."""
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    # ------------------------------------------------------------------ forward
    @triton.jit
    def _fwd_inner(acc, den, m_i, q, k_base, v_base, stride_kt, stride_vt, lo, hi,
                   offs_m, offs_n, offs_d, kv_len, qk_scale,
                   CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr):
        """Key blocks [lo, hi). CAUSAL: diagonal/partial blocks (causal mask, keys >= kv_len
        loaded as zeros); otherwise full blocks with no mask at all."""
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            cols = start_n + offs_n
            kt_ptrs = k_base + cols[None, :] * stride_kt + offs_d[:, None]
            v_ptrs = v_base + cols[:, None] * stride_vt + offs_d[None, :]
            if CAUSAL:
                kt = tl.load(kt_ptrs, mask=cols[None, :] < kv_len, other=0.0)
            else:
                kt = tl.load(kt_ptrs)
            qk = tl.dot(q, kt)
            if CAUSAL:
                x = tl.where(offs_m[:, None] >= cols[None, :], qk * qk_scale, 0.0)
                m_new = tl.maximum(m_i, tl.max(x, 1))
                e = tl.exp2(x - m_new[:, None])
            else:
                m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
                e = tl.exp2(qk * qk_scale - m_new[:, None])
            a = e - tl.exp2(-m_new)[:, None]
            alpha = tl.exp2(m_i - m_new)
            den = den * alpha + tl.sum(tl.abs(a), 1)
            acc = acc * alpha[:, None]
            if CAUSAL:
                v = tl.load(v_ptrs, mask=cols[:, None] < kv_len, other=0.0)
            else:
                v = tl.load(v_ptrs)
            p = tl.maximum(a, 0.0)
            acc = tl.dot(p.to(v.dtype), v, acc)
            m_i = m_new
        return acc, den, m_i

    @triton.jit(do_not_specialize=["T"])
    def _fwd_kernel(Q, K, V, O, L, SEQ_LENS,
                    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
                    H, G, T, T_BUCKET, qk_scale, eps,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        # heaviest (last) query blocks first: better tail balance under causal masking
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = pid_bh % H
        hk = h // G
        kv_len = tl.minimum(tl.load(SEQ_LENS + b), T)

        start_m = pid_m * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < T

        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        k_base = K + b * skb + hk * skh
        v_base = V + b * svb + hk * svh

        m_i = tl.zeros([BLOCK_M], dtype=tl.float32)   # running max, started at 0 (exact, see top)
        den = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

        # full key blocks: strictly below the diagonal block and entirely < kv_len
        full_hi = tl.minimum(start_m, (kv_len // BLOCK_N) * BLOCK_N)
        acc, den, m_i = _fwd_inner(acc, den, m_i, q, k_base, v_base, skt, svt, 0, full_hi,
                                   offs_m, offs_n, offs_d, kv_len, qk_scale, False, BLOCK_N)
        # diagonal block(s) and the partial block at kv_len
        diag_hi = tl.minimum(start_m + BLOCK_M, kv_len)
        acc, den, m_i = _fwd_inner(acc, den, m_i, q, k_base, v_base, skt, svt, full_hi, diag_hi,
                                   offs_m, offs_n, offs_d, kv_len, qk_scale, True, BLOCK_N)

        z = den + eps
        out = acc / z[:, None]
        tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :],
                 out.to(O.dtype.element_ty), mask=row_ok[:, None])
        tl.store(L + pid_bh.to(tl.int64) * T + offs_m, m_i + tl.log2(z), mask=row_ok)

    # ---------------------------------------------------------------- backward
    @triton.jit(do_not_specialize=["T"])
    def _bwd_preprocess(Q, K, V, O, DO, DELTA, SEQ_LENS,
                        sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot, sdb, sdh, sdt,
                        H, G, T, qk_scale, eps,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, FEW_KEYS: tl.constexpr):
        """Delta_i = sum_j dp_ij p_ij: rowsum(dO * O) from the stored O, except for rows that see at
        most FEW_KEYS keys (the first rows of a sequence), where it is summed exactly from p and dp.
        dS multiplies Delta's error by E = e^{x-m}/Z, which exceeds p by 1/(1 - e^{-x}) for a small
        positive score x; in a row with one visible key (p = a/(a+eps), true gradient ~eps) the
        bf16 rounding of P (in the forward's P @ V) and of O would leave an error of the order of
        dO. Rows with many keys spread Z over many entries and keep bf16-level errors."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = pid_bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        ok = offs_m < T
        o = tl.load(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :],
                    mask=ok[:, None], other=0.0)
        do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdt + offs_d[None, :],
                     mask=ok[:, None], other=0.0)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        kv_len = tl.minimum(tl.load(SEQ_LENS + b), T)
        if (pid_m * BLOCK_M < FEW_KEYS) | (kv_len <= FEW_KEYS):
            hk = h // G
            offs_r = tl.arange(0, FEW_KEYS)
            kmask = offs_r[:, None] < kv_len
            k = tl.load(K + b * skb + hk * skh + offs_r[:, None] * skt + offs_d[None, :], mask=kmask, other=0.0)
            v = tl.load(V + b * svb + hk * svh + offs_r[:, None] * svt + offs_d[None, :], mask=kmask, other=0.0)
            q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :],
                        mask=ok[:, None], other=0.0)
            # p exactly as the forward computes it (its own max and sum: all visible keys are here;
            # recomputing p from L instead would cancel E - 2^-L and lose bits for small a)
            x = tl.where(offs_r[None, :] <= offs_m[:, None], tl.dot(q, tl.trans(k)) * qk_scale, 0.0)
            m = tl.maximum(tl.max(x, 1), 0.0)
            a = tl.exp2(x - m[:, None]) - tl.exp2(-m)[:, None]
            p = tl.maximum(a, 0.0) / (tl.sum(tl.abs(a), 1) + eps)[:, None]
            exact = tl.sum(p * tl.dot(do, tl.trans(v)), 1)
            delta = tl.where(tl.minimum(offs_m + 1, kv_len) <= FEW_KEYS, exact, delta)
        tl.store(DELTA + pid_bh.to(tl.int64) * T + offs_m, delta, mask=ok)

    @triton.jit
    def _dkdv_inner(dk, dv, k, v, q_base, do_base, l_base, delta_base, stride_qt, stride_dot,
                    lo, hi, offs_n, offs_d, T, qk_scale, BLOCK_M: tl.constexpr):
        """One key block against query blocks [lo, hi), computed transposed ([BLOCK_N, BLOCK_M]).
        One loop with the causal mask on every block: k and v are matrix-unit A operands held in
        registers, and each further loop kept its own copy of them (two or three loops spilled
        hundreds of bytes at head_dim 128, one loop none; see benchmarks/attention_notes.md)."""
        offs_m0 = tl.arange(0, BLOCK_M)
        for start_m in range(lo, hi, BLOCK_M):
            start_m = tl.multiple_of(start_m, BLOCK_M)
            rows = start_m + offs_m0
            ok = rows < T                                       # rows past T load as zeros
            qt = tl.load(q_base + rows[None, :] * stride_qt + offs_d[:, None], mask=ok[None, :], other=0.0)
            lr = tl.load(l_base + rows, mask=ok, other=0.0)
            qkt = tl.dot(k, qt)                                 # [BLOCK_N, BLOCK_M]
            x = tl.where(rows[None, :] >= offs_n[:, None], qkt * qk_scale, 0.0)
            e = tl.exp2(x - lr[None, :])
            a = e - tl.exp2(-lr)[None, :]
            do = tl.load(do_base + rows[:, None] * stride_dot + offs_d[None, :], mask=ok[:, None], other=0.0)
            dl = tl.load(delta_base + rows, mask=ok, other=0.0)
            pt = tl.maximum(a, 0.0)
            dv = tl.dot(pt.to(do.dtype), do, dv)
            dpt = tl.dot(v, tl.trans(do))                       # [BLOCK_N, BLOCK_M]
            t = tl.where(a > 0.0, dpt - dl[None, :], tl.where(a < 0.0, dl[None, :], 0.0))
            dst = e * t
            dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk)
        return dk, dv

    @triton.jit(do_not_specialize=["T"])
    def _bwd_dkdv_kernel(Q, K, V, DO, L, DELTA, DK, DV, SEQ_LENS,
                         sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt,
                         sdkb, sdkh, sdkt, sdvb, sdvh, sdvt,
                         H, HKV, G, T, T_BUCKET, sm_scale, qk_scale,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // HKV).to(tl.int64)
        hk = pid_bh % HKV
        kv_len = tl.minimum(tl.load(SEQ_LENS + b), T)
        start_n = pid_n * BLOCK_N
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)

        dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        if start_n < kv_len:
            kmask = offs_n[:, None] < kv_len   # keys >= kv_len as zeros: score 0, no gradient
            k = tl.load(K + b * skb + hk * skh + offs_n[:, None] * skt + offs_d[None, :],
                        mask=kmask, other=0.0)
            v = tl.load(V + b * svb + hk * svh + offs_n[:, None] * svt + offs_d[None, :],
                        mask=kmask, other=0.0)
            for g in range(0, G):
                h = hk * G + g
                dk, dv = _dkdv_inner(dk, dv, k, v, Q + b * sqb + h * sqh, DO + b * sdb + h * sdh,
                                     L + (b * H + h) * T, DELTA + (b * H + h) * T, sqt, sdt,
                                     start_n, T, offs_n, offs_d, T, qk_scale, BLOCK_M)
        ok = offs_n[:, None] < T
        tl.store(DK + b * sdkb + hk * sdkh + offs_n[:, None] * sdkt + offs_d[None, :],
                 (dk * sm_scale).to(DK.dtype.element_ty), mask=ok)
        tl.store(DV + b * sdvb + hk * sdvh + offs_n[:, None] * sdvt + offs_d[None, :],
                 dv.to(DV.dtype.element_ty), mask=ok)

    @triton.jit
    def _dq_inner(dq, q, do, lr, emr, dl, k_base, v_base, stride_kt, stride_vt, lo, hi,
                  offs_m, offs_n, offs_d, kv_len, qk_scale,
                  CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr):
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            cols = start_n + offs_n
            kt_ptrs = k_base + cols[None, :] * stride_kt + offs_d[:, None]
            vt_ptrs = v_base + cols[None, :] * stride_vt + offs_d[:, None]
            if CAUSAL:
                kt = tl.load(kt_ptrs, mask=cols[None, :] < kv_len, other=0.0)
                vt = tl.load(vt_ptrs, mask=cols[None, :] < kv_len, other=0.0)
            else:
                kt = tl.load(kt_ptrs)
                vt = tl.load(vt_ptrs)
            qk = tl.dot(q, kt)
            if CAUSAL:
                x = tl.where(offs_m[:, None] >= cols[None, :], qk * qk_scale, 0.0)
                e = tl.exp2(x - lr[:, None])
            else:
                e = tl.exp2(qk * qk_scale - lr[:, None])
            a = e - emr[:, None]
            dp = tl.dot(do, vt)
            t = tl.where(a > 0.0, dp - dl[:, None], tl.where(a < 0.0, dl[:, None], 0.0))
            ds = e * t
            dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq)
        return dq

    @triton.jit(do_not_specialize=["T"])
    def _bwd_dq_kernel(Q, K, V, DO, L, DELTA, DQ, SEQ_LENS,
                       sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt,
                       sdqb, sdqh, sdqt,
                       H, G, T, T_BUCKET, sm_scale, qk_scale,
                       HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = pid_bh % H
        hk = h // G
        kv_len = tl.minimum(tl.load(SEQ_LENS + b), T)
        start_m = pid_m * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        ok = offs_m < T

        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :],
                    mask=ok[:, None], other=0.0)
        do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdt + offs_d[None, :],
                     mask=ok[:, None], other=0.0)
        lr = tl.load(L + pid_bh.to(tl.int64) * T + offs_m, mask=ok, other=0.0)
        dl = tl.load(DELTA + pid_bh.to(tl.int64) * T + offs_m, mask=ok, other=0.0)
        emr = tl.exp2(-lr)
        k_base = K + b * skb + hk * skh
        v_base = V + b * svb + hk * svh

        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        full_hi = tl.minimum(start_m, (kv_len // BLOCK_N) * BLOCK_N)
        dq = _dq_inner(dq, q, do, lr, emr, dl, k_base, v_base, skt, svt, 0, full_hi,
                       offs_m, offs_n, offs_d, kv_len, qk_scale, False, BLOCK_N)
        diag_hi = tl.minimum(start_m + BLOCK_M, kv_len)
        dq = _dq_inner(dq, q, do, lr, emr, dl, k_base, v_base, skt, svt, full_hi, diag_hi,
                       offs_m, offs_n, offs_d, kv_len, qk_scale, True, BLOCK_N)
        tl.store(DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqt + offs_d[None, :],
                 (dq * sm_scale).to(DQ.dtype.element_ty), mask=ok[:, None])


# ------------------------------------------------------------------ configs
# (BLOCK_M, BLOCK_N, num_warps, num_stages) per head-dim class (64: head_dim <= 64; 128).
# Forward and dq: BLOCK_M % BLOCK_N == 0 (the diagonal is covered by whole key blocks);
# dkdv: BLOCK_N % BLOCK_M == 0. Every listed config compiles for sm_90 without register spills
# (bf16; `python benchmarks/attention.py --compile-only` prints registers, spills, shared memory).
FWD_CONFIGS = {
    64: [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3), (128, 32, 4, 4)],
    128: [(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (64, 64, 4, 3), (128, 64, 8, 2)],
}
DKDV_CONFIGS = {
    64: [(32, 128, 8, 3), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 8, 3), (16, 128, 8, 3)],
    128: [(32, 128, 8, 2), (32, 128, 8, 3), (32, 64, 8, 3), (16, 128, 8, 3), (16, 64, 4, 3)],
}
DQ_CONFIGS = {
    64: [(128, 32, 8, 3), (128, 64, 8, 3), (64, 32, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2)],
    128: [(128, 32, 8, 3), (128, 64, 8, 2), (64, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 3)],
}
CONFIGS = {"fwd": FWD_CONFIGS, "dkdv": DKDV_CONFIGS, "dq": DQ_CONFIGS}
# used when autotuning is off (QBENCH_SOFTPICK_AUTOTUNE=0, the interpreter) and no config is given
DEFAULT_CONFIGS = {
    "fwd": {64: (128, 64, 8, 3), 128: (128, 64, 8, 3)},
    "dkdv": {64: (32, 128, 8, 3), 128: (32, 128, 8, 2)},
    "dq": {64: (128, 32, 8, 3), 128: (128, 32, 8, 3)},
}
PREPROCESS_BLOCK = 64
PREPROCESS_FEW_KEYS = 16   # rows with at most this many visible keys get an exact Delta


def _dclass(head_dim: int) -> int:
    return 64 if head_dim <= 64 else 128


def _autotune_enabled() -> bool:
    return not _interpreting() and os.environ.get("QBENCH_SOFTPICK_AUTOTUNE", "1") != "0"


_TUNED = {}


def _tuned(name, dclass):
    """The autotuned wrapper of kernel `name` for a head-dim class (built once). Keyed on a
    power-of-2 bucket of T, not T itself, so that each new length of an evaluation batch does
    not re-tune."""
    if (name, dclass) not in _TUNED:
        kernel, key = {
            "fwd": (_fwd_kernel, ["T_BUCKET", "HEAD_DIM"]),
            "dkdv": (_bwd_dkdv_kernel, ["T_BUCKET", "HEAD_DIM"]),
            "dq": (_bwd_dq_kernel, ["T_BUCKET", "HEAD_DIM"]),
        }[name]
        cfgs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                for bm, bn, w, s in CONFIGS[name][dclass]]
        _TUNED[(name, dclass)] = triton.autotune(configs=cfgs, key=key)(kernel)
    return _TUNED[(name, dclass)]


def best_configs() -> dict:
    """What the autotuner chose so far: {kernel: {key: config}} (for the benchmark report)."""
    chosen = {}
    for (name, _), tuned in _TUNED.items():
        chosen.setdefault(name, {}).update({str(k): str(c) for k, c in tuned.cache.items()})
    return chosen


def _launch(name, kernel, n_rows, n_bh, args, config, head_dim, **constexprs):
    """Run `kernel` with a fixed config, or its autotuned wrapper when config is None.
    The grid is (blocks over the rows the kernel's programs own, B * heads)."""
    block = "BLOCK_N" if name == "dkdv" else "BLOCK_M"
    if config is None and _autotune_enabled():
        _tuned(name, _dclass(head_dim))[lambda meta: (triton.cdiv(n_rows, meta[block]), n_bh)](
            *args, HEAD_DIM=head_dim, **constexprs)
        return
    bm, bn, w, s = config if config is not None else DEFAULT_CONFIGS[name][_dclass(head_dim)]
    blocks = triton.cdiv(n_rows, bn if name == "dkdv" else bm)
    kernel[(blocks, n_bh)](*args, HEAD_DIM=head_dim, **constexprs, BLOCK_M=bm, BLOCK_N=bn,
                           num_warps=w, num_stages=s)


def _bucket(t: int) -> int:
    return max(64, triton.next_power_of_2(t))


_FULL_LENS = {}


def _seq_lens_tensor(seq_lens, b, t, device):
    if seq_lens is None:  # cached: no fill kernel per call (never written to)
        key = (b, t, str(device))
        if key not in _FULL_LENS:
            if len(_FULL_LENS) > 256:
                _FULL_LENS.clear()
            _FULL_LENS[key] = torch.full((b,), t, dtype=torch.int32, device=device)
        return _FULL_LENS[key]
    seq_lens = torch.as_tensor(seq_lens, device=device).to(torch.int32).contiguous()
    if seq_lens.shape != (b,):
        raise ValueError(f"seq_lens must have shape [{b}], got {tuple(seq_lens.shape)}")
    return seq_lens


def _lastdim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def _check(q, k, v):
    subclasses = sorted({type(t).__name__ for t in (q, k, v) if type(t) is not torch.Tensor})
    if subclasses:
        raise TypeError(f"the softpick kernel reads raw memory and needs plain tensors, got {subclasses} "
                        "(qbench.attention.plain_tensor converts them)")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be [B, H, T, D]")
    b, h, t, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[2] != t or k.shape[3] != d:
        raise ValueError(f"k, v must be [B, Hkv, T, D] matching q {tuple(q.shape)}; got "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if h % k.shape[1]:
        raise ValueError(f"num kv heads {k.shape[1]} must divide num heads {h}")
    if d not in HEAD_DIMS:
        raise ValueError(f"head_dim {d} not supported (supported: {HEAD_DIMS})")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v must share a dtype among fp16/bf16/fp32; got {q.dtype}, {k.dtype}, {v.dtype}")


def softpick_forward(q, k, v, seq_lens=None, eps=SOFTPICK_EPS, scale=None, out=None, config=None):
    """Forward only: (out [B, H, T, D], L [B, H, T] float32 = m + log2(Z) per query row).
    `out` may be given (q's shape and dtype, contiguous last dim); `config` =
    (BLOCK_M, BLOCK_N, num_warps, num_stages) skips autotuning."""
    _check(q, k, v)
    q, k, v = _lastdim_contiguous(q), _lastdim_contiguous(k), _lastdim_contiguous(v)
    b, h, t, d = q.shape
    hkv = k.shape[1]
    sm_scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    lens = _seq_lens_tensor(seq_lens, b, t, q.device)
    o = torch.empty_like(q) if out is None else out
    if o.shape != q.shape or o.dtype != q.dtype or o.stride(-1) != 1:
        raise ValueError("out must match q's shape and dtype, with a contiguous last dim")
    lse = torch.empty((b, h, t), dtype=torch.float32, device=q.device)
    if t == 0 or b == 0 or h == 0:
        return o, lse
    args = (q, k, v, o, lse, lens, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
            h, h // hkv, t, _bucket(t), sm_scale * LOG2E, float(eps))
    _launch("fwd", _fwd_kernel, t, b * h, args, config, d)
    return o, lse


def softpick_backward(q, k, v, o, lse, do, seq_lens=None, scale=None, dq=None, dk=None, dv=None,
                      configs=None, eps=SOFTPICK_EPS):
    """Backward: (dq, dk, dv). `configs` = {"dkdv": (...), "dq": (...)} skips autotuning;
    dq, dk, dv may be given (same shapes and dtypes as q, k, v; contiguous last dim)."""
    q, k, v, o, do = (_lastdim_contiguous(x) for x in (q, k, v, o, do))
    b, h, t, d = q.shape
    hkv = k.shape[1]
    sm_scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    lens = _seq_lens_tensor(seq_lens, b, t, q.device)
    dq = torch.empty_like(q) if dq is None else dq
    dk = torch.empty_like(k) if dk is None else dk
    dv = torch.empty_like(v) if dv is None else dv
    if t == 0 or b == 0 or h == 0:
        return dq, dk, dv
    delta = torch.empty((b, h, t), dtype=torch.float32, device=q.device)
    common = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
    _bwd_preprocess[(triton.cdiv(t, PREPROCESS_BLOCK), b * h)](
        q, k, v, o, do, delta, lens, *common, *o.stride()[:3], *do.stride()[:3],
        h, h // hkv, t, sm_scale * LOG2E, float(eps),
        HEAD_DIM=d, BLOCK_M=PREPROCESS_BLOCK, FEW_KEYS=PREPROCESS_FEW_KEYS, num_warps=4)
    configs = configs or {}
    common = (*common, *do.stride()[:3])
    args = (q, k, v, do, lse, delta, dk, dv, lens, *common, *dk.stride()[:3], *dv.stride()[:3],
            h, hkv, h // hkv, t, _bucket(t), sm_scale, sm_scale * LOG2E)
    _launch("dkdv", _bwd_dkdv_kernel, t, b * hkv, args, configs.get("dkdv"), d)
    args = (q, k, v, do, lse, delta, dq, lens, *common, *dq.stride()[:3],
            h, h // hkv, t, _bucket(t), sm_scale, sm_scale * LOG2E)
    _launch("dq", _bwd_dq_kernel, t, b * h, args, configs.get("dq"), d)
    return dq, dk, dv


class _SoftpickAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, seq_lens, eps, scale):
        o, lse = softpick_forward(q, k, v, seq_lens, eps, scale)
        ctx.save_for_backward(q, k, v, o, lse, seq_lens)
        ctx.scale, ctx.eps = scale, eps
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, lens = ctx.saved_tensors
        dq, dk, dv = softpick_backward(q, k, v, o, lse, do, lens, ctx.scale, eps=ctx.eps)
        return dq, dk, dv, None, None, None


def softpick_attention(q, k, v, seq_lens=None, eps: float = SOFTPICK_EPS, scale: float | None = None):
    """Causal softpick attention. q [B, H, T, D]; k, v [B, Hkv, T, D] (Hkv divides H);
    seq_lens: optional int [B] for right-padded batches (keys >= seq_lens[b] masked).
    scale defaults to 1/sqrt(D). Returns out [B, H, T, D] in q's dtype (and q's layout when q is
    a transposed view); differentiable."""
    if triton is None:
        raise RuntimeError("softpick_attention needs triton")
    if not (q.is_cuda or _interpreting()):
        raise RuntimeError("softpick_attention needs CUDA tensors (or TRITON_INTERPRET=1)")
    _check(q, k, v)
    if seq_lens is not None:
        seq_lens = _seq_lens_tensor(seq_lens, q.shape[0], q.shape[2], q.device)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return _SoftpickAttention.apply(q, k, v, seq_lens, eps, scale)
        return softpick_forward(q, k, v, seq_lens, eps, scale)[0]
