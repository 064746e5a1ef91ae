"""The fused attention-statistics path (CUDA): attention output and per-row log-sum-exp from one
fused kernel, then the column sums by a Triton kernel that never writes a score to memory.

Math: with lse[t] = log(sum_k exp(s[t, k]) + exp(sink)) the probabilities are
A[t, k] = exp(s[t, k] - lse[t]), so colsum[k] = sum_t w[t] * exp(s[t, k] - lse[t]) needs only
q.k, one exp and a sum: no softmax pass, no normalisation, no P @ V. The learned sink's share of
row t is exp(sink - lse[t]), one vector op.

Pieces (the kernels live in `sinkhole.probe.triton_kernels`, the wrappers that launch them here):
- `forward_kernel`: a flash-attention forward (online softmax) that handles every case the exact
  path does: GQA by index (K/V never repeated), bool or additive float masks of shape
  (B|1, 1|Hq, Tq, Tk) read through strides, causal skipping of key blocks, Gemma-2 softcap,
  gpt-oss sinks (the online softmax starts from the sink logit), Dv != D, fully-masked rows
  (left padding: output 0, lse = +inf so they add nothing). It writes (B, Tq, Hq, Dv) directly.
- torch's own flash kernel (`aten._scaled_dot_product_flash_attention`) replaces it in the
  commonest case (no mask, no softcap, Tq == Tk, D == Dv, half precision), because it is the one
  the plain forward runs; sinks are folded in afterwards by rescaling (out * exp(lse - lse')).
- `colsum_kernel`: one program per (key block, batch, query head); it loads its key tile once and
  walks the query blocks at or below the diagonal, accumulating w[t] * exp(s - lse[t]) over rows.

Triton is optional: this module imports without it, and the product only uses it on CUDA after a
one-time self-check against the exact path (`available`). Tests run both kernels on the CPU
through Triton's interpreter (TRITON_INTERPRET=1, set before importing this module).
"""

from __future__ import annotations

import functools
import math
import os
import warnings

import torch

from sinkhole.probe.triton_kernels import BLOCK_M, BLOCK_N, colsum_kernel, forward_kernel, triton

__all__ = ["available", "fused_attention_with_stats", "triton_colsum", "triton_forward"]


def _mask_args(mask: torch.Tensor | None, Hq: int):
    """(tensor, strides b/h/t/k, is_bool) for a (B|1, 1|Hq, Tq, Tk) mask; broadcast dims get stride 0."""
    if mask is None:
        return None, (0, 0, 0, 0), True
    is_bool = mask.dtype == torch.bool
    m = mask.view(torch.uint8) if is_bool else mask
    sb, sh, st, sk = m.stride()
    if m.shape[0] == 1:
        sb = 0
    if m.shape[1] == 1:
        sh = 0
    elif m.shape[1] != Hq:
        raise ValueError(f"mask head dimension {m.shape[1]} is neither 1 nor {Hq}")
    return m, (sb, sh, st, sk), is_bool


def _ieee(dtype: torch.dtype) -> bool:
    """float32 inputs: exact float32 dots (TF32 would change the numbers). bfloat16 under the
    interpreter: upcast too, because its numpy `dot` misreads bfloat16 (triton 3.9; the rounding of
    P to the value dtype is kept, so the numbers are those of the GPU's bf16 dot)."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1")


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def triton_forward(query, key, value, mask, scaling, softcap=None, sinks=None, causal=True):
    """Attention output (B, Tq, Hq, Dv) in query's dtype and lse (B, Hq, Tq) float32 (+inf on dead rows)."""
    B, Hq, Tq, D = query.shape
    Hkv, Tk, Dv = key.shape[1], key.shape[2], value.shape[-1]
    out = torch.empty(B, Tq, Hq, Dv, dtype=query.dtype, device=query.device)
    lse = torch.empty(B, Hq, Tq, dtype=torch.float32, device=query.device)
    m, ms, is_bool = _mask_args(mask, Hq)
    sinks_f = sinks.float().contiguous() if sinks is not None else lse  # a dummy pointer when unused
    grid = (triton.cdiv(Tq, BLOCK_M), B * Hq)
    forward_kernel[grid](
        query,
        key,
        value,
        out,
        lse,
        m if m is not None else lse,
        sinks_f,
        *query.stride(),
        *key.stride(),
        *value.stride(),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        out.stride(3),
        *ms,
        Hq,
        Hq // Hkv,
        Tq,
        Tk,
        D,
        Dv,
        Tk - Tq,
        float(scaling),
        float(softcap or 1.0),
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_D=_pow2(D),
        BLOCK_DV=_pow2(Dv),
        HAS_MASK=m is not None,
        MASK_BOOL=is_bool,
        HAS_SOFTCAP=softcap is not None,
        HAS_SINKS=sinks is not None,
        IS_CAUSAL=bool(causal or mask is None),
        IEEE=_ieee(query.dtype),
    )
    return out, lse


def triton_colsum(query, key, lse, mask, scaling, softcap=None, weight=None, causal=True):
    """colsum (B, Hq, Tk) float32 = sum_t weight[b, t] * exp(s[t, k] - lse[t]); weight (B, Tq) or None."""
    B, Hq, Tq, D = query.shape
    Hkv, Tk = key.shape[1], key.shape[2]
    colsum = torch.empty(B, Hq, Tk, dtype=torch.float32, device=query.device)
    m, ms, is_bool = _mask_args(mask, Hq)
    w = weight.float().contiguous() if weight is not None else None
    grid = (triton.cdiv(Tk, BLOCK_N), B * Hq)
    colsum_kernel[grid](
        query,
        key,
        lse.contiguous(),
        w if w is not None else colsum,
        m if m is not None else colsum,
        colsum,
        *query.stride(),
        *key.stride(),
        w.stride(0) if w is not None else 0,
        *ms,
        Hq,
        Hq // Hkv,
        Tq,
        Tk,
        D,
        Tk - Tq,
        float(scaling),
        float(softcap or 1.0),
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_D=_pow2(D),
        HAS_MASK=m is not None,
        MASK_BOOL=is_bool,
        HAS_SOFTCAP=softcap is not None,
        HAS_WEIGHT=w is not None,
        IS_CAUSAL=bool(causal or mask is None),
        IEEE=_ieee(query.dtype),
    )
    return colsum


_NATIVE_GQA = {"flash": True}  # torch's CUDA flash kernel takes fewer KV heads; learn once if it refuses


def torch_flash_forward(query, key, value, scaling):
    """torch's fused causal attention with its lse: out (B, Tq, Hq, D), lse (B, Hq, Tq) float32."""
    G = query.shape[1] // key.shape[1]
    if query.is_cuda:
        op = lambda k, v: torch.ops.aten._scaled_dot_product_flash_attention(
            query, k, v, 0.0, True, False, scale=scaling
        )
    else:  # the CPU twin, so that the tests exercise this path's bookkeeping
        op = lambda k, v: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, k, v, 0.0, True, scale=scaling
        )
    res = None
    if G > 1 and _NATIVE_GQA["flash"]:
        try:
            res = op(key, value)
        except RuntimeError:
            _NATIVE_GQA["flash"] = False
    if res is None:
        rep = lambda x: x if G == 1 else x.repeat_interleave(G, dim=1)
        res = op(rep(key), rep(value))
    out, lse = res[0], res[1]
    return out.transpose(1, 2).contiguous(), lse[..., : query.shape[2]].float()  # lse may come padded


def torch_flash_fits(query, key, value, mask, softcap) -> bool:
    """The cases torch's flash kernel computes exactly as the probe defines them."""
    D = query.shape[-1]
    return (
        mask is None
        and softcap is None
        and query.shape[2] == key.shape[2]
        and value.shape[-1] == D
        and D % 8 == 0
        and D <= 256
        and query.dtype in (torch.float16, torch.bfloat16)
    )


def fused_attention_with_stats(
    query, key, value, mask, scaling, softcap=None, sinks=None, query_valid=None, causal=True, forward: str = "auto"
):
    """Same contract as `attention_with_stats` (without maps). forward: "auto" | "torch" | "triton"."""
    if forward == "auto":
        forward = "torch" if query.is_cuda and torch_flash_fits(query, key, value, mask, softcap) else "triton"
    if forward == "torch":
        if not (mask is None and softcap is None):
            raise ValueError("torch's flash forward takes no mask and no softcap")
        out, lse = torch_flash_forward(query, key, value, scaling)
        if sinks is not None:  # one more logit per row: renormalise the output, extend the lse
            s = sinks.float().reshape(1, -1, 1)
            lse_all = torch.logaddexp(lse, s)
            out = (out.float() * torch.exp(lse - lse_all).transpose(1, 2)[..., None]).to(query.dtype)
            lse = lse_all
    else:
        out, lse = triton_forward(query, key, value, mask, scaling, softcap, sinks, causal)
    weight = query_valid.float() if query_valid is not None else None
    colsum = triton_colsum(query, key, lse, mask, scaling, softcap, weight, causal)
    sink_mass = None
    if sinks is not None:
        share = torch.exp(sinks.float().reshape(1, -1, 1) - lse)  # lse = +inf on dead rows: 0
        if weight is not None:
            share = share * weight[:, None, :]
        sink_mass = share.sum(-1)
    return out, colsum, sink_mass


@functools.cache
def available(device: str) -> bool:
    """Triton importable and the fused path agreeing with the exact one on `device` (checked once)."""
    if triton is None:
        return False
    from sinkhole.probe.exact_attention import exact_attention_with_stats

    try:
        gen = torch.Generator(device="cpu").manual_seed(0)
        dt = torch.bfloat16 if device.startswith("cuda") else torch.float32
        make = lambda *s: torch.randn(*s, generator=gen).to(device=device, dtype=dt)
        q, k, v = make(1, 4, 80, 64), make(1, 2, 80, 64), make(1, 2, 80, 64)
        sinks = torch.tensor([0.5, -1.0, 2.0, 0.0], device=device)
        mask = torch.ones(80, 80, dtype=torch.bool, device=device).tril_()[None, None]  # -> the Triton forward
        for kwargs in ({}, {"sinks": sinks}, {"sinks": sinks, "mask": mask}):
            kwargs.setdefault("mask", None)
            out, col, _ = fused_attention_with_stats(q, k, v, scaling=0.125, **kwargs)
            ref_out, ref_col, _, _ = exact_attention_with_stats(q, k, v, scaling=0.125, **kwargs)
            err = (col - ref_col).abs().max().item() / max(1.0, ref_col.abs().max().item())
            err_out = (out.float() - ref_out.float()).abs().max().item()
            if not (math.isfinite(err) and err < 1e-3 and err_out < 5e-2):
                raise RuntimeError(
                    f"fused attention disagrees with the exact path (colsum {err:.1e}, out {err_out:.1e})"
                )
    except Exception as exc:  # noqa: BLE001 - any failure means: use the exact path, and say so
        warnings.warn(
            f"sinkhole: fused attention statistics unavailable on {device} ({exc}); "
            "using the exact blocked path (slower)",
            stacklevel=2,
        )
        return False
    return True
