"""The Triton kernels of the fused attention-statistics path (`sinkhole.probe.triton_attention` has
the math, the design and the Python wrappers that launch them).

- `forward_kernel`: flash-attention forward (online softmax) writing the output (B, Tq, Hq, Dv) and
  the per-row log-sum-exp; GQA by index, bool / additive masks through strides, causal block
  skipping, softcap, learned sinks, fully-masked rows.
- `colsum_kernel`: per (key block, batch, query head), sum over query rows of w[t] * exp(s - lse[t]).

Triton is optional: without it this module defines only `triton = tl = None` and the tile sizes.
"""

from __future__ import annotations

try:  # optional: the CPU product never needs it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

BLOCK_M = 64  # query rows per tile
BLOCK_N = 64  # keys per tile


if triton is not None:

    @triton.jit
    def _dot(a, b, IEEE: tl.constexpr):
        """a @ b with float32 accumulation; IEEE: in exact float32 (no TF32), inputs upcast first."""
        if IEEE:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        return tl.dot(a, b)

    @triton.jit
    def _scores(
        q,
        k,
        offs_m,
        offs_n,
        b,
        h,
        Tq,
        Tk,
        offset,
        scale,
        softcap,
        M,
        smb,
        smh,
        smt,
        smk,
        HAS_MASK: tl.constexpr,
        MASK_BOOL: tl.constexpr,
        HAS_SOFTCAP: tl.constexpr,
        IS_CAUSAL: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        """Scores of one (BLOCK_M, BLOCK_N) tile, -inf where a key is hidden."""
        s = _dot(q, k, IEEE) * scale
        if HAS_SOFTCAP:  # softcap * tanh(s / softcap), tanh written with exp (portable to the interpreter)
            s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))
        visible = (offs_n[None, :] < Tk) & (offs_m[:, None] < Tq)
        if IS_CAUSAL:
            visible = visible & (offs_n[None, :] <= offs_m[:, None] + offset)
        if HAS_MASK:
            # int64: a (T, T) mask passes 2**31 elements at T = 46341
            mv = tl.load(
                M + b * smb + h * smh + offs_m[:, None].to(tl.int64) * smt + offs_n[None, :].to(tl.int64) * smk,
                mask=(offs_m[:, None] < Tq) & (offs_n[None, :] < Tk),
                other=0,
            )
            if MASK_BOOL:
                visible = visible & (mv != 0)
            else:
                s = s + mv.to(tl.float32)
        return tl.where(visible, s, float("-inf"))

    @triton.jit
    def forward_kernel(
        Q,
        K,
        V,
        O,
        LSE,
        M,
        SINKS,
        sqb,
        sqh,
        sqt,
        sqd,
        skb,
        skh,
        skt,
        skd,
        svb,
        svh,
        svt,
        svd,
        sob,
        sot,
        soh,
        sod,
        smb,
        smh,
        smt,
        smk,
        Hq,
        G,
        Tq,
        Tk,
        D,
        Dv,
        offset,
        scale,
        softcap,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_DV: tl.constexpr,
        HAS_MASK: tl.constexpr,
        MASK_BOOL: tl.constexpr,
        HAS_SOFTCAP: tl.constexpr,
        HAS_SINKS: tl.constexpr,
        IS_CAUSAL: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // Hq).to(tl.int64)  # int64 offsets: B * H * T * D may pass 2**31
        h = pid_bh % Hq
        hk = h // G  # GQA: the KV head this query head reads, no copy
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        q = tl.load(
            Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :] * sqd,
            mask=(offs_m[:, None] < Tq) & (offs_d[None, :] < D),
            other=0.0,
        )
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
        hi = Tk
        if IS_CAUSAL:
            hi = tl.minimum(Tk, offset + (pid_m + 1) * BLOCK_M)
        for n0 in range(0, hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            k = tl.load(
                K + b * skb + hk * skh + offs_n[None, :] * skt + offs_d[:, None] * skd,
                mask=(offs_n[None, :] < Tk) & (offs_d[:, None] < D),
                other=0.0,
            )
            s = _scores(
                q,
                k,
                offs_m,
                offs_n,
                b,
                h,
                Tq,
                Tk,
                offset,
                scale,
                softcap,
                M,
                smb,
                smh,
                smt,
                smk,
                HAS_MASK,
                MASK_BOOL,
                HAS_SOFTCAP,
                IS_CAUSAL,
                IEEE,
            )
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(
                V + b * svb + hk * svh + offs_n[:, None] * svt + offs_dv[None, :] * svd,
                mask=(offs_n[:, None] < Tk) & (offs_dv[None, :] < Dv),
                other=0.0,
            )
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
            m_i = m_new
        dead = l_i == 0.0  # no visible key (left-padding rows): output 0, adds nothing to any statistic
        m_f = tl.where(dead, 0.0, m_i)
        l_f = tl.where(dead, 1.0, l_i)
        if HAS_SINKS:  # the sink is one more logit in the softmax, with no value
            sink = tl.load(SINKS + h + offs_m * 0).to(tl.float32)
            m_s = tl.maximum(m_f, sink)
            l_f = l_f * tl.exp(m_f - m_s) + tl.exp(sink - m_s)
            acc = acc * (tl.exp(m_f - m_s) / l_f)[:, None]
            m_f = m_s
        else:
            acc = acc / l_f[:, None]
        acc = tl.where(dead[:, None], 0.0, acc)
        lse = tl.where(dead, float("inf"), m_f + tl.log(l_f))
        tl.store(LSE + pid_bh * Tq + offs_m, lse, mask=offs_m < Tq)
        tl.store(
            O + b * sob + h * soh + offs_m[:, None] * sot + offs_dv[None, :] * sod,
            acc.to(O.dtype.element_ty),
            mask=(offs_m[:, None] < Tq) & (offs_dv[None, :] < Dv),
        )

    @triton.jit
    def colsum_kernel(
        Q,
        K,
        LSE,
        W,
        M,
        C,
        sqb,
        sqh,
        sqt,
        sqd,
        skb,
        skh,
        skt,
        skd,
        swb,
        smb,
        smh,
        smt,
        smk,
        Hq,
        G,
        Tq,
        Tk,
        D,
        offset,
        scale,
        softcap,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        HAS_MASK: tl.constexpr,
        MASK_BOOL: tl.constexpr,
        HAS_SOFTCAP: tl.constexpr,
        HAS_WEIGHT: tl.constexpr,
        IS_CAUSAL: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // Hq).to(tl.int64)
        h = pid_bh % Hq
        hk = h // G
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        k = tl.load(
            K + b * skb + hk * skh + offs_n[None, :] * skt + offs_d[:, None] * skd,
            mask=(offs_n[None, :] < Tk) & (offs_d[:, None] < D),
            other=0.0,
        )
        acc = tl.zeros([BLOCK_N], tl.float32)
        lo = 0
        if IS_CAUSAL:  # rows above the first that can see this key block see none of it
            lo = (tl.maximum(0, pid_n * BLOCK_N - offset) // BLOCK_M) * BLOCK_M
        for m0 in range(lo, Tq, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            q = tl.load(
                Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < Tq) & (offs_d[None, :] < D),
                other=0.0,
            )
            s = _scores(
                q,
                k,
                offs_m,
                offs_n,
                b,
                h,
                Tq,
                Tk,
                offset,
                scale,
                softcap,
                M,
                smb,
                smh,
                smt,
                smk,
                HAS_MASK,
                MASK_BOOL,
                HAS_SOFTCAP,
                IS_CAUSAL,
                IEEE,
            )
            lse = tl.load(LSE + pid_bh * Tq + offs_m, mask=offs_m < Tq, other=float("inf"))
            p = tl.exp(s - lse[:, None])
            p = tl.where(s == float("-inf"), 0.0, p)  # hidden keys, and dead rows (lse = +inf)
            if HAS_WEIGHT:
                w = tl.load(W + b * swb + offs_m, mask=offs_m < Tq, other=0.0)
                p = p * w[:, None]
            acc += tl.sum(p, 0)
        tl.store(C + pid_bh * Tk + offs_n, acc, mask=offs_n < Tk)

else:  # pragma: no cover - without Triton the wrappers never launch a kernel (`available` is False)
    forward_kernel = colsum_kernel = None
