"""The head-aware cache's attention function: one SDPA call per head group of a layer's plan.

`HeadAwareLayer.update` (sinkhole.cache.head_aware) hands its groups (heads, stored keys and values,
mask, and a store's `observe` callable) to this function through the `kwargs` dict transformers
passes from `Cache.update` to the attention interface; `head_aware_attention(model)` registers it
for the duration of a block (`AttentionInterface`, no patched model code).
"""

from __future__ import annotations

import torch

from sinkhole.cache.kv_select import window_scores
from sinkhole.errors import SinkholeError

ATTN_NAME = "sinkhole_head_aware"
PLAN_KEY = "sinkhole_head_aware_plan"


def take(t: torch.Tensor, idx) -> torch.Tensor:
    """Heads `idx` (None: all, a slice, or an index tensor) along dim 1."""
    if idx is None:
        return t
    return t[:, idx] if isinstance(idx, slice) else t.index_select(1, idx)


def head_aware_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """AttentionInterface function: one attention call per head group of the layer's plan.

    query (B, Hq, q, D); returns (output (B, q, Hq, Dv), None). Without a plan (another cache, or
    none) it is transformers' SDPA. The G query heads of a KV head are packed as extra rows (G x q
    rows ordered (g, t)), so keys are never repeated; each group's output goes straight into the
    returned layout.
    """
    plan = kwargs.pop(PLAN_KEY, None)
    if plan is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if kwargs.get("softcap") is not None:
        raise SinkholeError("HeadAwareSinkCache does not support attention logit softcapping")
    plan["used"] = True
    B, Hq, q, D = query.shape
    groups = plan["groups"]
    n_kv = sum(g[1].shape[1] for g in groups)
    G = Hq // n_kv
    Dv = groups[0][2].shape[-1]  # all groups: the layer's value head size
    qg = query.reshape(B, n_kv, G, q, D)
    out = None
    memo = plan["memo"]
    for idx, keys, values, mask, observe in groups:
        h = keys.shape[1]
        window = getattr(observe, "window", None)  # a `kv_select.Select` choosing its keys now
        if observe is None or window:
            qh = take(qg, idx).reshape(B, h, G * q, D)
            m = None if mask is None else memo.derived(mask, ("packed", G, qh.dtype), packed_mask(G, qh.dtype))
            o = torch.nn.functional.scaled_dot_product_attention(qh, keys, values, attn_mask=m, scale=scaling)
            if window:  # the last `window` queries' attention, before the store drops keys
                observe(window_scores(qh.reshape(B, h * G, q, D), keys, scaling or D**-0.5, window, mask))
        else:  # the store chooses what to keep by the attention its keys receive: explicit probabilities
            hidden = None if mask is None else memo.derived(mask, "hidden", torch.logical_not)
            o, colsum = attention_and_colsum(take(qg, idx), keys, values, hidden, scaling)
            observe(colsum)
        o = o.reshape(B, h, G, q, Dv).permute(0, 3, 1, 2, 4)  # (B, q, h, G, Dv)
        if idx is None:  # one group: every head
            return o.reshape(B, q, Hq, Dv), None
        if out is None:
            out = o.new_empty(B, q, n_kv, G, Dv)
        if isinstance(idx, slice):
            out[:, :, idx] = o
        else:
            out.index_copy_(2, idx, o)
    return out.view(B, q, Hq, Dv), None


def packed_mask(G: int, dtype):
    """For SDPA on packed rows: a chunk's boolean mask repeated G times along the rows and made
    additive in `dtype` (what SDPA does to a boolean mask, with the same numbers)."""

    def build(mask: torch.Tensor) -> torch.Tensor:
        rows = mask.repeat(G, 1) if mask.dim() == 2 else mask.repeat(1, 1, G, 1)
        return torch.zeros(rows.shape, dtype=dtype, device=rows.device).masked_fill_(~rows, float("-inf"))

    return build


def attention_and_colsum(q, k, v, hidden, scaling):
    """Softmax attention with the probabilities' column sums: q (B, h, G, T, D) (the G query heads of
    each KV head; any strides), k (B, h, N, D), v (B, h, N, Dv), hidden None or bool (T, N) or
    (B, h, T, N), True = masked, the same for the G heads. Returns output (B, h, G x T, Dv) in v's
    dtype, rows ordered (g, t), and colsum (B, h, N) float32 (summed over the G x T rows).

    A decode step or a chunk over a bounded ring. On a CPU the softmax and the column sums are one
    pass of `sinkhole.probe.cpu_kernel` (no intra-op threads: on a shared CPU every parallel torch
    op waits for a descheduled thread, and the ops, not the arithmetic, set the time); torch ops
    otherwise, with the same numbers to float rounding."""
    from sinkhole.probe.cpu_kernel import kernel, softmax_colsum
    from sinkhole.probe.exact_attention import grads_flow

    B, h, G, T, D = q.shape
    N = k.shape[2]
    grads = grads_flow(q, k, v)
    # the scale goes on the (small) queries, in the one copy that packs their rows, not on the scores
    if grads:
        qs = q.float() * scaling
    else:
        qs = torch.mul(q.float(), scaling, out=torch.empty(B, h, G, T, D, dtype=torch.float32, device=q.device))
    s = torch.matmul(qs.reshape(B, h, G * T, D), k.float().transpose(-1, -2))
    if hidden is not None:
        s.view(B, h, G, T, N).masked_fill_(hidden.unsqueeze(-3), float("-inf"))
    fused = kernel() if s.device.type == "cpu" and not grads else None
    if fused is not None:
        colsum = torch.zeros(B, h, G, N, dtype=torch.float32, device=s.device)
        softmax_colsum(s.view(B, h, G, T, N), colsum, None, fn=fused)
        p, colsum = s, colsum.sum(2)
    else:
        p = torch.softmax(s, dim=-1)
        colsum = p.sum(-2)
    return torch.matmul(p.to(v.dtype), v), colsum


def head_aware_attention(model: torch.nn.Module):
    """Run `model` with the head-aware attention function for the duration of the block."""
    from sinkhole.probe.hooks import registered_attention

    return registered_attention(model, ATTN_NAME, head_aware_attention_forward)
