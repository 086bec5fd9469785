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

Configs (block sizes, warps, pipeline stages, variant) come from one committed data table,
kernel_configs.json beside this file, per kernel, head-dim class and T bucket: nothing is chosen
by timing at run time, so the same inputs give the same bits (the accumulation order depends on
the block sizes). `config_table_version()` hashes the table (cells put it in their key);
`backend_label()` names the configs a call runs. Tuning happens offline only
(`qbench bench attention --tune` writes a new table). Variant "tma": K/V (and Q, dO) tiles come
through Hopper's tensor-memory accelerator (host tensor descriptors) instead of pointer loads;
same arithmetic, so the same numbers up to the block sizes.

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
import hashlib
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import torch

try:  # triton is optional: this module must import on machines without it
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None
    TensorDescriptor = None

try:
    from ..errors import QBenchError
except ImportError:  # loaded straight from its file (the interpreter tests): no qbench package
    class QBenchError(Exception):
        pass

__all__ = ["softpick_attention", "is_available", "SOFTPICK_EPS", "KernelConfig", "KernelConfigError",
           "config_table_version", "backend_label", "table_config", "use_config_table"]

SOFTPICK_EPS = 1e-6
LOG2E = 1.4426950408889634
HEAD_DIMS = (16, 32, 64, 128)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def is_available() -> bool:
    """True when the kernel can run here: triton is installed and a CUDA device is present."""
    return triton is not None and torch.cuda.is_available()


def _patch_interpreter_numpy():
    """Triton 3.6's interpreter converts scalar tensors with int(array of shape (1,)), which
    numpy >= 2.4 rejects (it breaks `range(lo, hi)` with tensor bounds). Convert via .reshape."""
    import numpy as np
    import triton.runtime.interpreter as interp

    original = interp._patch_lang_tensor
    if getattr(original, "_qbench_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patched._qbench_patched = True
    interp._patch_lang_tensor = patched


if triton is not None and _interpreting():   # TRITON_INTERPRET=1: the kernels run on the CPU (tests)
    _patch_interpreter_numpy()


if triton is not None:

    @triton.jit
    def _tile(desc, base, b, h, start, rows, offs_d, stride_t, n_valid,
              MASKED: tl.constexpr, TMA: tl.constexpr, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
        """Rows [start, start + BLOCK) of one head, [BLOCK, HEAD_DIM]. TMA: through the tensor
        descriptor (rows >= T arrive as zeros). Else pointer loads from `base` (the head's row 0),
        rows >= n_valid as zeros when MASKED."""
        if TMA:
            return desc.load([b, h, start, 0]).reshape(BLOCK, HEAD_DIM)
        ptrs = base + rows[:, None] * stride_t + offs_d[None, :]
        if MASKED:
            return tl.load(ptrs, mask=rows[:, None] < n_valid, other=0.0)
        return tl.load(ptrs)

    # ------------------------------------------------------------------ forward
    @triton.jit
    def _fwd_inner(acc, den, m_i, q, k_base, v_base, kd, vd, b, hk, stride_kt, stride_vt, lo, hi,
                   offs_m, offs_n, offs_d, kv_len, qk_scale,
                   CAUSAL: tl.constexpr, TMA: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
        """Key blocks [lo, hi). CAUSAL: diagonal/partial blocks (causal mask, keys >= kv_len
        loaded as zeros, or masked by score under TMA); otherwise full blocks with no mask at all."""
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            cols = start_n + offs_n
            if TMA:
                kt = tl.trans(_tile(kd, k_base, b, hk, start_n, cols, offs_d, stride_kt, kv_len,
                                    CAUSAL, TMA, BLOCK_N, HEAD_DIM))
            elif CAUSAL:
                kt = tl.load(k_base + cols[None, :] * stride_kt + offs_d[:, None], mask=cols[None, :] < kv_len,
                             other=0.0)
            else:
                kt = tl.load(k_base + cols[None, :] * stride_kt + offs_d[:, None])
            qk = tl.dot(q, kt)
            if CAUSAL:
                visible = offs_m[:, None] >= cols[None, :]
                if TMA:  # keys in [kv_len, T) were loaded: their score must be 0 (see the top)
                    visible = visible & (cols[None, :] < kv_len)
                x = tl.where(visible, qk * qk_scale, 0.0)
                m_new = tl.maximum(m_i, tl.max(x, 1))
                e = tl.exp2(x - m_new[:, None])
            else:
                m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
                e = tl.exp2(qk * qk_scale - m_new[:, None])
            a = e - tl.exp2(-m_new)[:, None]
            alpha = tl.exp2(m_i - m_new)
            den = den * alpha + tl.sum(tl.abs(a), 1)
            acc = acc * alpha[:, None]
            v = _tile(vd, v_base, b, hk, start_n, cols, offs_d, stride_vt, kv_len, CAUSAL, TMA, BLOCK_N, HEAD_DIM)
            p = tl.maximum(a, 0.0)   # 0 for keys >= kv_len, so their v (finite) adds nothing
            acc = tl.dot(p.to(v.dtype), v, acc)
            m_i = m_new
        return acc, den, m_i

    @triton.jit(do_not_specialize=["T"])
    def _fwd_kernel(Q, K, V, O, L, SEQ_LENS, QD, KD, VD,
                    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
                    H, G, T, qk_scale, eps,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr):
        # heaviest (last) query blocks first: better tail balance under causal masking
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
        pid_bh = tl.program_id(1)
        b32 = pid_bh // H
        b = b32.to(tl.int64)
        h = pid_bh % H
        hk = h // G
        kv_len = tl.minimum(tl.load(SEQ_LENS + b), T)

        start_m = pid_m * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < T

        q = _tile(QD, Q + b * sqb + h * sqh, b32, h, start_m, offs_m, offs_d, sqt, T, True, TMA, BLOCK_M, HEAD_DIM)
        k_base = K + b * skb + hk * skh
        v_base = V + b * svb + hk * svh

        m_i = tl.zeros([BLOCK_M], dtype=tl.float32)   # running max, started at 0 (exact, see top)
        den = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

        # full key blocks: strictly below the diagonal block and entirely < kv_len
        full_hi = tl.minimum(start_m, (kv_len // BLOCK_N) * BLOCK_N)
        acc, den, m_i = _fwd_inner(acc, den, m_i, q, k_base, v_base, KD, VD, b32, hk, skt, svt, 0, full_hi,
                                   offs_m, offs_n, offs_d, kv_len, qk_scale, False, TMA, BLOCK_N, HEAD_DIM)
        # diagonal block(s) and the partial block at kv_len
        diag_hi = tl.minimum(start_m + BLOCK_M, kv_len)
        acc, den, m_i = _fwd_inner(acc, den, m_i, q, k_base, v_base, KD, VD, b32, hk, skt, svt, full_hi, diag_hi,
                                   offs_m, offs_n, offs_d, kv_len, qk_scale, True, TMA, BLOCK_N, HEAD_DIM)

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
    def _dkdv_inner(dk, dv, k, v, q_base, do_base, qd, dod, b, h, l_base, delta_base, stride_qt, stride_dot,
                    lo, hi, offs_n, offs_d, T, qk_scale,
                    TMA: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
        """One key block against query blocks [lo, hi), computed transposed ([BLOCK_N, BLOCK_M]).
        One loop with the causal mask on every block: k and v are matrix-unit A operands held in
        registers, and each further loop kept its own copy of them (two or three loops spilled
        hundreds of bytes at head_dim 128, one loop none; see benchmarks/attention_notes.md)."""
        offs_m0 = tl.arange(0, BLOCK_M)
        for start_m in range(lo, hi, BLOCK_M):
            start_m = tl.multiple_of(start_m, BLOCK_M)
            rows = start_m + offs_m0
            ok = rows < T                                       # rows past T load as zeros
            if TMA:
                qt = tl.trans(qd.load([b, h, start_m, 0]).reshape(BLOCK_M, HEAD_DIM))
            else:
                qt = tl.load(q_base + rows[None, :] * stride_qt + offs_d[:, None], mask=ok[None, :], other=0.0)
            lr = tl.load(l_base + rows, mask=ok, other=0.0)
            qkt = tl.dot(k, qt)                                 # [BLOCK_N, BLOCK_M]
            x = tl.where(rows[None, :] >= offs_n[:, None], qkt * qk_scale, 0.0)
            e = tl.exp2(x - lr[None, :])
            a = e - tl.exp2(-lr)[None, :]
            do = _tile(dod, do_base, b, h, start_m, rows, offs_d, stride_dot, T, True, TMA, BLOCK_M, HEAD_DIM)
            dl = tl.load(delta_base + rows, mask=ok, other=0.0)
            pt = tl.maximum(a, 0.0)
            dv = tl.dot(pt.to(do.dtype), do, dv)
            dpt = tl.dot(v, tl.trans(do))                       # [BLOCK_N, BLOCK_M]
            t = tl.where(a > 0.0, dpt - dl[None, :], tl.where(a < 0.0, dl[None, :], 0.0))
            dst = e * t
            dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk)
        return dk, dv

    @triton.jit(do_not_specialize=["T"])
    def _bwd_dkdv_kernel(Q, K, V, DO, L, DELTA, DK, DV, SEQ_LENS, QD, DOD,
                         sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt,
                         sdkb, sdkh, sdkt, sdvb, sdvh, sdvt,
                         H, HKV, G, T, sm_scale, qk_scale,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b32 = pid_bh // HKV
        b = b32.to(tl.int64)
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
                dk, dv = _dkdv_inner(dk, dv, k, v, Q + b * sqb + h * sqh, DO + b * sdb + h * sdh, QD, DOD, b32, h,
                                     L + (b * H + h) * T, DELTA + (b * H + h) * T, sqt, sdt,
                                     start_n, T, offs_n, offs_d, T, qk_scale, TMA, BLOCK_M, HEAD_DIM)
        ok = offs_n[:, None] < T
        tl.store(DK + b * sdkb + hk * sdkh + offs_n[:, None] * sdkt + offs_d[None, :],
                 (dk * sm_scale).to(DK.dtype.element_ty), mask=ok)
        tl.store(DV + b * sdvb + hk * sdvh + offs_n[:, None] * sdvt + offs_d[None, :],
                 dv.to(DV.dtype.element_ty), mask=ok)

    @triton.jit
    def _dq_inner(dq, q, do, lr, emr, dl, k_base, v_base, kd, vd, b, hk, stride_kt, stride_vt, lo, hi,
                  offs_m, offs_n, offs_d, kv_len, qk_scale,
                  CAUSAL: tl.constexpr, TMA: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            cols = start_n + offs_n
            if TMA:
                kt = tl.trans(_tile(kd, k_base, b, hk, start_n, cols, offs_d, stride_kt, kv_len,
                                    CAUSAL, TMA, BLOCK_N, HEAD_DIM))
                vt = tl.trans(_tile(vd, v_base, b, hk, start_n, cols, offs_d, stride_vt, kv_len,
                                    CAUSAL, TMA, BLOCK_N, HEAD_DIM))
            else:
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
                visible = offs_m[:, None] >= cols[None, :]
                if TMA:  # keys in [kv_len, T): score 0 gives a == 0, hence ds == 0
                    visible = visible & (cols[None, :] < kv_len)
                x = tl.where(visible, qk * qk_scale, 0.0)
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
    def _bwd_dq_kernel(Q, K, V, DO, L, DELTA, DQ, SEQ_LENS, KD, VD,
                       sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt,
                       sdqb, sdqh, sdqt,
                       H, G, T, sm_scale, qk_scale,
                       HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr):
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
        pid_bh = tl.program_id(1)
        b32 = pid_bh // H
        b = b32.to(tl.int64)
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
        dq = _dq_inner(dq, q, do, lr, emr, dl, k_base, v_base, KD, VD, b32, hk, skt, svt, 0, full_hi,
                       offs_m, offs_n, offs_d, kv_len, qk_scale, False, TMA, BLOCK_N, HEAD_DIM)
        diag_hi = tl.minimum(start_m + BLOCK_M, kv_len)
        dq = _dq_inner(dq, q, do, lr, emr, dl, k_base, v_base, KD, VD, b32, hk, skt, svt, full_hi, diag_hi,
                       offs_m, offs_n, offs_d, kv_len, qk_scale, True, TMA, BLOCK_N, HEAD_DIM)
        tl.store(DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqt + offs_d[None, :],
                 (dq * sm_scale).to(DQ.dtype.element_ty), mask=ok[:, None])


# ------------------------------------------------------------------ configs
class KernelConfigError(QBenchError, ValueError):
    """The kernel config table (or a config given by hand) is malformed. Names the file and field."""


class KernelConfig(NamedTuple):
    """One launch config of one kernel. Forward and dq: block_m % block_n == 0 (the diagonal is
    covered by whole key blocks); dkdv: block_n % block_m == 0. tma: Hopper's tensor-memory
    accelerator loads the tiles that stream through the loop (sm_90+; elsewhere, or when a
    tensor's base or strides are not 16-byte aligned, the same blocks with pointer loads)."""
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    tma: bool = False

    def label(self) -> str:
        return ",".join(str(x) for x in self[:4]) + (",tma" if self.tma else "")


KERNELS = ("fwd", "dkdv", "dq")
HEAD_DIM_CLASSES = (64, 128)
VARIANTS = ("tma",)   # the optional 5th entry of a config in the table

# Candidates that `qbench bench attention --tune` times per (kernel, head-dim class, T bucket);
# the GPU tests check each against float64. Every non-tma entry compiles for sm_90 without
# register spills (bf16; `qbench bench attention --compile-only` prints registers, spills,
# shared memory, wgmma and TMA instructions for all of them).
FWD_CONFIGS = {
    64: [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3), (128, 32, 4, 4),
         (128, 64, 8, 3, "tma"), (128, 128, 8, 2, "tma"), (64, 64, 4, 3, "tma")],
    128: [(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (64, 64, 4, 3), (128, 64, 8, 2),
          (128, 64, 8, 3, "tma"), (128, 64, 8, 4, "tma"), (128, 128, 8, 2, "tma"), (128, 128, 8, 3, "tma")],
}
DKDV_CONFIGS = {
    64: [(32, 128, 8, 3), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 8, 3), (16, 128, 8, 3),
         (32, 128, 8, 3, "tma"), (64, 128, 8, 2, "tma")],
    128: [(32, 128, 8, 2), (32, 128, 8, 3), (32, 64, 8, 3), (16, 128, 8, 3), (16, 64, 4, 3),
          (32, 128, 8, 2, "tma"), (32, 128, 8, 3, "tma")],   # (64, 128, 8, 2, "tma") spills 72 B here
}
DQ_CONFIGS = {
    64: [(128, 32, 8, 3), (128, 64, 8, 3), (64, 32, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2),
         (128, 32, 8, 3, "tma"), (128, 64, 8, 3, "tma")],
    128: [(128, 32, 8, 3), (128, 64, 8, 2), (64, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 3),
          (128, 32, 8, 3, "tma"), (128, 64, 8, 2, "tma"), (128, 64, 8, 3, "tma")],
}
CONFIGS = {"fwd": FWD_CONFIGS, "dkdv": DKDV_CONFIGS, "dq": DQ_CONFIGS}
PREPROCESS_BLOCK = 64
PREPROCESS_FEW_KEYS = 16   # rows with at most this many visible keys get an exact Delta
CONFIG_TABLE = Path(__file__).resolve().with_name("kernel_configs.json")


def _dclass(head_dim: int) -> int:
    return 64 if head_dim <= 64 else 128


def t_bucket(t: int) -> int:
    """The T bucket a sequence length falls in: max(64, next power of 2)."""
    return max(64, 1 << max(0, int(t) - 1).bit_length())


def as_config(entry, kernel: str = "fwd", where: str = "config") -> KernelConfig:
    """A KernelConfig from (block_m, block_n, num_warps, num_stages[, "tma"]) or a KernelConfig;
    raises KernelConfigError naming `where` if it cannot run."""
    if isinstance(entry, KernelConfig):
        cfg = entry
    else:
        entry = list(entry) if isinstance(entry, (list, tuple)) else [entry]
        flags = entry[4:]
        if len(entry) not in (4, 5) or not all(isinstance(x, int) and not isinstance(x, bool) for x in entry[:4]):
            raise KernelConfigError(f"{where}: expected [BLOCK_M, BLOCK_N, num_warps, num_stages] (+ optional "
                                    f"variant {list(VARIANTS)}), got {entry!r}")
        if any(f not in VARIANTS for f in flags):
            raise KernelConfigError(f"{where}: unknown variant {flags[0]!r} (known: {list(VARIANTS)})")
        cfg = KernelConfig(*entry[:4], tma="tma" in flags)
    bm, bn, w, s = cfg[:4]
    pow2 = lambda x, lo, hi: lo <= x <= hi and x & (x - 1) == 0  # noqa: E731
    problems = [f"{name} {x} is not a power of 2 in [{lo}, {hi}]" for name, x, lo, hi in
                (("BLOCK_M", bm, 16, 256), ("BLOCK_N", bn, 16, 256), ("num_warps", w, 1, 16)) if not pow2(x, lo, hi)]
    if not 1 <= s <= 8:
        problems.append(f"num_stages {s} is not in [1, 8]")
    if not problems and kernel in ("fwd", "dq") and bm % bn:
        problems.append(f"{kernel} needs BLOCK_M % BLOCK_N == 0, got {bm}, {bn}")
    if not problems and kernel == "dkdv" and bn % bm:
        problems.append(f"dkdv needs BLOCK_N % BLOCK_M == 0, got {bm}, {bn}")
    if problems:
        raise KernelConfigError(f"{where}: " + "; ".join(problems))
    return cfg


def parse_config_table(raw: dict, source: str = "kernel config table") -> dict:
    """{kernel: {head-dim class: {bucket or "default": KernelConfig}}} from the table's JSON."""
    configs = raw.get("configs") if isinstance(raw, dict) else None
    if not isinstance(configs, dict):
        raise KernelConfigError(f"{source}: no 'configs' object")
    if sorted(configs) != sorted(KERNELS):
        raise KernelConfigError(f"{source}: field 'configs' must have exactly the kernels {list(KERNELS)}, "
                                f"got {sorted(configs)}")
    table = {}
    for kernel in KERNELS:
        by_class = configs[kernel]
        if not isinstance(by_class, dict) or sorted(by_class) != sorted(str(c) for c in HEAD_DIM_CLASSES):
            raise KernelConfigError(f"{source}: field 'configs.{kernel}' must have the head-dim classes "
                                    f"{[str(c) for c in HEAD_DIM_CLASSES]}")
        table[kernel] = {}
        for dclass in HEAD_DIM_CLASSES:
            buckets = by_class[str(dclass)]
            where = f"{source}: field 'configs.{kernel}.{dclass}"
            if not isinstance(buckets, dict) or "default" not in buckets:
                raise KernelConfigError(f"{where}' needs a 'default' entry")
            parsed = {}
            for key, entry in buckets.items():
                if key != "default" and not (key.isdigit() and t_bucket(int(key)) == int(key)):
                    raise KernelConfigError(f"{where}.{key}': a bucket is 'default' or a power of 2 >= 64")
                parsed["default" if key == "default" else int(key)] = as_config(entry, kernel, f"{where}.{key}'")
            table[kernel][dclass] = parsed
    return table


_TABLE = {}   # "raw", "parsed", "source": the table in use (loaded on first use)


def _table() -> dict:
    if not _TABLE:
        try:
            raw = json.loads(CONFIG_TABLE.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise KernelConfigError(f"{CONFIG_TABLE}: cannot read the kernel config table: {err}") from None
        _TABLE.update(raw=raw, parsed=parse_config_table(raw, str(CONFIG_TABLE)), source=str(CONFIG_TABLE))
    return _TABLE


@contextlib.contextmanager
def use_config_table(raw: dict, source: str = "a table given in code"):
    """Run the block with another table (its JSON as a dict): for `qbench bench attention --tune`
    and tests. Evaluation and training always use the committed table."""
    saved = dict(_table())
    _TABLE.clear()
    _TABLE.update(raw=raw, parsed=parse_config_table(raw, source), source=source)
    try:
        yield
    finally:
        _TABLE.clear()
        _TABLE.update(saved)


def config_table_version() -> str:
    """Hash of the config table in use (its 'configs' only: notes can change freely). Every
    softpick number computed by the kernel depends on it; cell keys hold it."""
    canonical = json.dumps(_table()["raw"]["configs"], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def table_config(kernel: str, head_dim: int, t: int) -> KernelConfig:
    """The table's config of `kernel` for this head dim and sequence length."""
    by_bucket = _table()["parsed"][kernel][_dclass(head_dim)]
    return by_bucket.get(t_bucket(t), by_bucket["default"])


def _tma_usable(tensors) -> bool:
    """TMA needs sm_90+ and 16-byte aligned bases and strides (last dim contiguous)."""
    if TensorDescriptor is None:
        return False
    for x in tensors:
        if x.stride(-1) != 1 or x.data_ptr() % 16 or any(s * x.element_size() % 16 for s in x.stride()[:-1]):
            return False
    return _interpreting() or all(x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= 9 for x in tensors)


def _config_for(kernel, config, head_dim, t, tma_tensors) -> KernelConfig:
    """The config that runs: the given one or the table's, without tma where TMA cannot run."""
    cfg = table_config(kernel, head_dim, t) if config is None else as_config(config, kernel)
    return cfg._replace(tma=False) if cfg.tma and not _tma_usable(tma_tensors) else cfg


def backend_label(q, k=None, v=None) -> str:
    """The configs the next softpick_attention call on these inputs runs, e.g.
    "fwd(128,64,8,3)", plus ",dkdv(...),dq(...)" when autograd will differentiate it (whether a
    backward tma config can run is judged on q, k, v: dO is not known yet)."""
    _, _, t, d = q.shape
    tensors = [x for x in (q, k, v) if x is not None]
    label = f"fwd({_config_for('fwd', None, d, t, tensors).label()})"
    if torch.is_grad_enabled() and any(x.requires_grad for x in tensors):
        label += "".join(f",{name}({_config_for(name, None, d, t, tensors).label()})" for name in ("dkdv", "dq"))
    return label


_LAST_RUN = {}   # kernel -> KernelConfig of its latest launch (tests check which config ran)


def last_configs() -> dict:
    return dict(_LAST_RUN)


def _descriptor(x, rows):
    """Host tensor descriptor of a [B, H, T, D] tensor, one [rows, D] tile of one head per load."""
    return TensorDescriptor(x, list(x.shape), list(x.stride()), [1, 1, rows, x.shape[-1]])


def _launch(kernel_name, kernel, n_rows, n_bh, args, config, head_dim, t, tma_tensors):
    """Run `kernel` with `config` (None: the table's). The grid is (blocks over the rows the
    kernel's programs own, B * heads); tma_tensors get descriptors of the streamed tile."""
    cfg = _config_for(kernel_name, config, head_dim, t, tma_tensors)
    _LAST_RUN[kernel_name] = cfg
    tile_rows = cfg.block_m if kernel_name == "dkdv" else cfg.block_n   # rows of the tiles streamed in the loop
    descriptors = [None] * len(tma_tensors)
    if cfg.tma:
        descriptors = [_descriptor(x, cfg.block_m if (kernel_name == "fwd" and i == 0) else tile_rows)
                       for i, x in enumerate(tma_tensors)]
    blocks = triton.cdiv(n_rows, cfg.block_n if kernel_name == "dkdv" else cfg.block_m)
    kernel[(blocks, n_bh)](*args[0], *descriptors, *args[1], HEAD_DIM=head_dim, BLOCK_M=cfg.block_m,
                           BLOCK_N=cfg.block_n, TMA=cfg.tma, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


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
    `out` may be given (q's shape and dtype, contiguous last dim); `config` (a KernelConfig or
    (BLOCK_M, BLOCK_N, num_warps, num_stages[, "tma"])) replaces the table's."""
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
    args = ((q, k, v, o, lse, lens),
            (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], h, h // hkv, t, sm_scale * LOG2E,
             float(eps)))
    _launch("fwd", _fwd_kernel, t, b * h, args, config, d, t, (q, k, v))
    return o, lse


def softpick_backward(q, k, v, o, lse, do, seq_lens=None, scale=None, dq=None, dk=None, dv=None,
                      configs=None, eps=SOFTPICK_EPS):
    """Backward: (dq, dk, dv). `configs` = {"dkdv": ..., "dq": ...} replaces the table's;
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
    args = ((q, k, v, do, lse, delta, dk, dv, lens),
            (*common, *dk.stride()[:3], *dv.stride()[:3], h, hkv, h // hkv, t, sm_scale, sm_scale * LOG2E))
    _launch("dkdv", _bwd_dkdv_kernel, t, b * hkv, args, configs.get("dkdv"), d, t, (q, do))
    args = ((q, k, v, do, lse, delta, dq, lens),
            (*common, *dq.stride()[:3], h, h // hkv, t, sm_scale, sm_scale * LOG2E))
    _launch("dq", _bwd_dq_kernel, t, b * h, args, configs.get("dq"), d, t, (k, v))
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
