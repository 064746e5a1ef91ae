"""Attention that measures itself: exact softmax attention computed in query blocks, returning the
output together with per-key column sums of the attention probabilities.

Design:
- One pure function, `attention_with_stats`, does the math; `sinkhole_attention` is the thin
  adapter registered with transformers' `AttentionInterface` under the name "sinkhole" (and
  `sdpa_mask` under `AttentionMaskInterface`, so masks arrive boolean, or None when plain causal
  suffices).
- Queries are processed in blocks sized by a memory budget, and each block only looks at the keys
  it can see (causal skip), so no [heads, T, T] tensor exists, let alone [layers, heads, T, T].
- GQA: keys/values are never repeated; queries are viewed as [B, Hkv, G, T, D] and broadcast.
- Outside an active probe (no recorder set), the function defers to transformers' SDPA, so a
  model left on "sinkhole" attention behaves exactly as before.
"""

from __future__ import annotations

import contextvars

import torch

ATTN_NAME = "sinkhole"
DEFAULT_BLOCK_BYTES = 64 << 20  # scores of one query block: the largest temporary we allow

# The active recorder for the forward pass in flight (see sinkhole.probe.recorder); None = plain SDPA.
ACTIVE_RECORDER: contextvars.ContextVar = contextvars.ContextVar("sinkhole_recorder", default=None)


def attention_with_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    query_valid: torch.Tensor | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    keep_probs: bool = False,
    causal: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Exact attention plus the column sums of its probabilities.

    Args:
        query: (B, Hq, Tq, D), post-RoPE.  key: (B, Hkv, Tk, D), post-RoPE.  value: (B, Hkv, Tk, Dv).
            Hq is a multiple of Hkv (GQA); the last Tq keys are the queries' own positions.
        mask: None (plain causal), bool (B|1, 1|Hq, Tq, Tk) with True = may attend, or an additive
            float mask of that shape.
        scaling: multiplier of q.k (usually D**-0.5).
        softcap: if set, logits become softcap * tanh(logits / softcap) (Gemma-2).
        sinks: (Hq,) learned per-head sink logits (gpt-oss); they take probability mass but no value.
        query_valid: (B, Tq) bool; rows that are padding contribute nothing to the column sums.
        keep_probs: also return the full probabilities (B, Hq, Tq, Tk) in float16 (small inputs only).
        causal: the model never attends to later keys (whatever the mask says), so each query block
            skips the keys past its last row. Only a bidirectional model would set False.

    Returns:
        out: (B, Tq, Hq, Dv) in query's dtype, the layout transformers' attention functions return.
        colsum: (B, Hq, Tk) float32, sum over valid query rows t of A[t, k].
        probs: (B, Hq, Tq, Tk) float16 when keep_probs, else None.
    """
    B, Hq, Tq, D = query.shape
    Hkv, Tk, Dv = key.shape[1], key.shape[2], value.shape[-1]
    G = Hq // Hkv
    offset = Tk - Tq  # absolute position of query row 0 among the keys
    q = query.reshape(B, Hkv, G, Tq, D)
    k_t = key.unsqueeze(2).transpose(-1, -2)  # (B, Hkv, 1, D, Tk)
    v = value.unsqueeze(2)  # (B, Hkv, 1, Tk, Dv)
    out = torch.empty(B, Hkv, G, Tq, Dv, dtype=query.dtype, device=query.device)
    colsum = torch.zeros(B, Hkv, G, Tk, dtype=torch.float32, device=query.device)
    probs_all = (
        torch.zeros(B, Hq, Tq, Tk, dtype=torch.float16, device=query.device) if keep_probs else None
    )
    block = max(1, min(Tq, block_bytes // max(1, B * Hq * Tk * 4)))
    for q0 in range(0, Tq, block):
        q1 = min(Tq, q0 + block)
        # In a causal model, keys past the block's last query are invisible: skip them.
        kend = offset + q1 if (causal or mask is None) else Tk
        scores = torch.matmul(q[:, :, :, q0:q1].float(), k_t[..., :kend].float()) * scaling  # (B,Hkv,G,tb,kend)
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if mask is None:
            rows = torch.arange(offset + q0, offset + q1, device=query.device)[:, None]
            allowed = torch.arange(kend, device=query.device)[None, :] <= rows  # (tb, kend)
            scores = scores.masked_fill(~allowed, float("-inf"))
        else:
            m = mask[..., q0:q1, :kend]
            m = m.reshape(m.shape[0], -1, 1, q1 - q0, kend) if m.shape[1] == 1 else m.reshape(m.shape[0], Hkv, G, q1 - q0, kend)
            scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
        if sinks is not None:
            sink_logit = sinks.float().reshape(1, Hkv, G, 1, 1).expand(B, Hkv, G, q1 - q0, 1)
            p = torch.softmax(torch.cat([scores, sink_logit], dim=-1), dim=-1)[..., :-1]
        else:
            p = torch.softmax(scores, dim=-1)
        p = torch.nan_to_num(p, nan=0.0)  # fully masked rows (left padding) attend to nothing
        out[:, :, :, q0:q1] = torch.matmul(p.to(value.dtype), v[..., :kend, :])
        pv = p if query_valid is None else p * query_valid[:, None, None, q0:q1, None].to(p.dtype)
        colsum[..., :kend] += pv.sum(dim=-2)
        if keep_probs:
            probs_all[:, :, q0:q1, :kend] = p.reshape(B, Hq, q1 - q0, kend).to(torch.float16)
    out = out.reshape(B, Hq, Tq, Dv).transpose(1, 2).contiguous()
    return out, colsum.reshape(B, Hq, Tk), probs_all


def sinkhole_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers AttentionInterface adapter; returns (output (B, T, Hq, Dv), None)."""
    recorder = ACTIVE_RECORDER.get()
    if recorder is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    layer = getattr(module, "layer_idx", None)
    return recorder.attention(
        layer, query, key, value, attention_mask, scaling,
        softcap=kwargs.get("softcap"), sinks=kwargs.get("s_aux"), causal=getattr(module, "is_causal", True),
    ), None


def register() -> str:
    """Register "sinkhole" with transformers (idempotent) and return the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, sinkhole_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    return ATTN_NAME
