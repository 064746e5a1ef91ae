"""The token mask's forward: plain attention that keeps each query row's log-sum-exp, so the attention
mass of any key can be computed afterwards for a few keys only, at the cost of a plain forward.

Why: a key's column mass needs every A[t, k] = exp(q_t . k * scale - lse[t]), and lse[t] needs all
of row t's scores. The probe's exact path (`sinkhole.probe.attention`) gets both by computing every
score once more than SDPA would; that buys every key's column sum. The token mask needs column
sums only for a few candidate keys (the first token, the highest-norm tokens), so it runs the same
fused kernel SDPA runs on a CPU (`_scaled_dot_product_flash_attention_for_cpu`), which returns lse
for free, keeps each layer's post-RoPE queries and keys and lse, and later computes
(T x C) scores per head for the C candidates: exact probabilities for those keys, C << T.

What it keeps: per layer, the queries (B, Hq, T, D), keys (B, Hkv, T, D), lse (B, Hq, T) and a
reference to the mask tensor (shared by layers): about one residual stream per layer in all, freed
when the batch is done. Attention this path does not cover (softcap, learned sinks, a logits bias,
bidirectional or non-token attention, a device other than the CPU) is marked `unsupported`: the
forward completes with transformers' SDPA and the caller measures that batch with the exact probe.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager

import torch

from sinkhole.probe.hooks import attention_implementation, context_value, first_tensor, hooked, register_attention

ATTN_NAME = "sinkhole_lse"
ACTIVE: contextvars.ContextVar = contextvars.ContextVar("sinkhole_lse_recorder", default=None)
COLUMN_BLOCK = 64  # candidate keys per step: (B, Hq, T, 64) float32 is 9 MB for one 4096-token SmolLM2 row


class LseRecorder:
    """What one batch's forward keeps for the token mask. B sequences left-padded to T tokens."""

    def __init__(self, n_layers: int, query_valid: torch.Tensor):
        B, T = query_valid.shape
        self.query_valid = query_valid  # (B, T) bool
        self.resid_norm = torch.zeros(n_layers, B, T)  # ||h_l[t]||, h_l = decoder layer l's output
        self.kept: list[tuple | None] = [None] * n_layers  # (query, key, lse, mask, scaling) per layer
        self.current_layer: int | None = None
        self.unsupported: str | None = None  # why the fast path could not measure this forward
        self._float_masks: dict[int, torch.Tensor] = {}  # id(bool mask) -> additive float mask

    def residual(self, layer: int, h: torch.Tensor) -> None:
        if h.dim() != 3 or h.shape[:2] != self.resid_norm.shape[1:]:
            self.unsupported = f"decoder layer output of shape {tuple(h.shape)}"
            return
        self.resid_norm[layer] = torch.linalg.vector_norm(h.float(), dim=-1).cpu()
        self.current_layer = None

    def float_mask(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The fused kernel takes an additive mask of the query's dtype. A row with no visible key
        (left padding's own rows) gets its diagonal, so it stays finite (it is never measured)."""
        key = id(mask)
        if key not in self._float_masks:
            m = mask
            if m.dtype == torch.bool:
                Tq, Tk = m.shape[-2:]
                diag = torch.ones(Tq, Tk, dtype=torch.bool, device=m.device).tril_(Tk - Tq).triu_(Tk - Tq)
                m = m | (diag & ~m.any(dim=-1, keepdim=True))
                m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))
            self._float_masks[key] = (mask, m.to(dtype))  # the original is kept so its id stays unique
        return self._float_masks[key][1]


def lse_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers AttentionInterface adapter: SDPA's CPU kernel, keeping q, k and lse for later."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rec = ACTIVE.get()
    layer = None
    if rec is not None:
        layer = rec.current_layer if rec.current_layer is not None else getattr(module, "layer_idx", None)
        reason = _unsupported(module, query, key, kwargs) or (layer is None and "attention outside a decoder layer")
        rec.unsupported = rec.unsupported or reason or None
    if rec is None or rec.unsupported:  # plain SDPA; the caller measures this batch with the exact probe
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    mask = None if attention_mask is None else rec.float_mask(attention_mask, query.dtype)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, mask is None, attn_mask=mask, scale=scaling
    )  # out (B, Hq, T, Dv), lse (B, Hq, T) float32; GQA keys are broadcast by the kernel
    if rec.kept[layer] is not None:
        rec.unsupported = "several attention calls in one layer"
    rec.kept[layer] = (query, key, lse, attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), None


def _unsupported(module, query, key, kwargs) -> str | None:
    if query.device.type != "cpu":
        return f"device {query.device.type}"
    if query.dim() != 4 or query.shape[2] != key.shape[2]:
        return "not causal self-attention over the tokens"
    if not getattr(module, "is_causal", True):
        return "bidirectional attention"
    if kwargs.get("softcap") is not None:
        return "logit softcapping"
    if kwargs.get("position_bias") is not None:
        return "an additive logits bias"
    if kwargs.get("s_aux") is not None or isinstance(getattr(module, "sinks", None), torch.nn.Parameter):
        return "learned sinks"
    return None


def candidate_colsum(
    query: torch.Tensor,
    key: torch.Tensor,
    lse: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    candidates: torch.Tensor,
    query_valid: torch.Tensor,
) -> torch.Tensor:
    """Column sums of the attention probabilities for C candidate keys per sequence (exact).

    query (B, Hq, T, D), key (B, Hkv, T, D) post-RoPE; lse (B, Hq, T) each row's log-sum-exp of
    its scaled, masked scores; mask None (plain causal) or (B|1, 1, T, T) bool / additive float;
    candidates (B, C) long key positions (in the padded layout); query_valid (B, T) bool.
    Returns (B, Hq, C) float32: sum over valid query rows t of A[t, c] = exp(q_t . k_c * scale - lse[t]).
    """
    if candidates.shape[1] > COLUMN_BLOCK:  # bound the (B, Hq, T, C) probabilities' memory
        parts = candidates.split(COLUMN_BLOCK, dim=1)
        return torch.cat([candidate_colsum(query, key, lse, mask, scaling, c, query_valid) for c in parts], dim=-1)
    B, Hq, T, D = query.shape
    Hkv = key.shape[1]
    G = Hq // Hkv
    idx = candidates[:, None, :, None].expand(B, Hkv, candidates.shape[1], D)
    kc = torch.gather(key.float(), 2, idx)  # (B, Hkv, C, D)
    q = query.float().reshape(B, Hkv, G * T, D)
    s = torch.matmul(q, kc.transpose(-1, -2)).view(B, Hkv, G, T, -1) * scaling  # (B, Hkv, G, T, C)
    s = s.view(B, Hq, T, -1)
    rows = torch.arange(T, device=query.device)
    visible = rows[None, :, None] >= candidates[:, None, :]  # (B, T, C) causal
    if mask is not None:
        cols = torch.gather(mask.expand(B, -1, T, T), 3, candidates[:, None, None, :].expand(B, mask.shape[1], T, -1))
        if cols.dtype == torch.bool:
            visible = visible[:, None] & cols  # (B, 1, T, C)
        else:
            s = s + cols.float()
            visible = visible[:, None]
    else:
        visible = visible[:, None]
    visible = visible & query_valid[:, None, :, None]
    p = torch.exp(s - lse.float()[..., None]).masked_fill_(~visible, 0.0)
    return p.sum(dim=2)


@contextmanager
def lse_recording(model: torch.nn.Module, family, rec: LseRecorder):
    """Switch the model to the lse attention and hook its decoder layers while inside; undone in `finally`."""
    layers = family.decoder_layers(model)
    forward, pre = [], []
    for idx, layer in enumerate(layers):
        forward.append((layer, lambda m, i, out, idx=idx: rec.residual(idx, first_tensor(out))))
        pre.append((layer, lambda m, args, idx=idx: setattr(rec, "current_layer", idx)))
    with (
        attention_implementation(model, register_attention(ATTN_NAME, lse_attention)),
        context_value(ACTIVE, rec),
        hooked(forward=forward, pre=pre),
    ):
        yield rec
