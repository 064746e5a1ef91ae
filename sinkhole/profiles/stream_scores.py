"""Per-head streaming scores: how much of each KV head's attention stays on the sinks and the last
W keys (DuoAttention's "streaming heads" vs "retrieval heads", measured rather than optimised).

Definition. For layer l, KV head g and query t (0-based), with A the model's own attention
probabilities (causal, and limited to the layer's sliding window where it has one):

    band(t)        = {k : k < S} | {k : t - W < k <= t}        (S sink tokens, window of W keys, the
                                                               query itself included: what a cache of
                                                               S sinks + W recent tokens attends to)
    share_lg(t)    = mean over the query heads h of group g of  sum_{k in band(t)} A_lh[t, k]
    score_lg       = mean of share_lg(t) over the eligible queries t >= S + W (for earlier queries the
                     band is every key), over all prompts
    copy_score_lg  = the same mean over the *copy queries* only: the tokens of a repeated span whose
                     next token is a copy of something far outside the window (`copy_queries`)
    needle_score_lg = over needle prompts the model answers (teacher-forced), the max over the query
                     heads of group g of the mean over the answer positions of their attention on
                     the needle (its value, the 8 tokens before, 2 after): `needle_share`

A score near 1 means sinks + window lose nothing for that head; a retrieval head scores lower (a
needle score is the other way round: near 1 for a head that reads the needle).
Measured on SmolLM2, the plain score is dominated by diffuse heads (early layers spread attention
over everything, ~0.3-0.6 on every query) that a cache can drop without losing a copy; the copy
score singles out the heads that reach back exactly when a far token is needed, so the head-aware
cache ranks by it (docs/cache.md has the numbers).
Sliding-window layers use S = 0 (their sinks left the window during training, so a cache must not
bring them back): a sliding layer is streaming by construction, and its score says whether a window
W shorter than its own loses anything.

How. `band_share` is a pure function over one layer's post-RoPE queries and keys, run query block by
query block (no T x T map: a block holds tb x T scores). The measurement
(`sinkhole.experiments.head_scores.measure_streaming_scores`) runs the probe's recorder with a tap
that calls it per layer, over prompts with long-range dependencies built here: Python
documentation text with random-token spans that repeat far later (`copy_prompt`), the pattern a
retrieval head exists for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from sinkhole.errors import SinkholeError

BLOCK_BYTES = 32 * 2**20  # scores of one query block: keeps the working set cache-sized


def band_share(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    n_sink: int,
    window: int,
    sliding_window: int | None = None,
    softcap: float | None = None,
    block_bytes: int = BLOCK_BYTES,
    targets: torch.Tensor | None = None,
):
    """Per query, the attention share on sinks + the last `window` keys, for queries t >= n_sink + window.

    query: (B, Hq, T, D), key: (B, Hkv, T, D), post-RoPE, one unpadded causal sequence per row,
    Hq a multiple of Hkv (GQA: query head h reads KV head h // (Hq / Hkv)). sliding_window: the
    layer's own window (a key k is visible to t when t - k < sliding_window), None for global layers.
    Returns share (B, Hkv, T - t0) float32, t0 = n_sink + window (empty when t0 >= T): for each KV
    head the mean over its query heads. Exact softmax in float32, query block by query block.
    targets: optional (T,) long, one key per query (-1: none); then returns (share, target_mass),
    target_mass (B, Hkv, T - t0) the probability on that key (0 where none), same head mean.
    """
    B, Hq, T, D = query.shape
    Hkv = key.shape[1]
    if Hq % Hkv:
        raise SinkholeError(f"{Hq} query heads do not group over {Hkv} KV heads")
    G = Hq // Hkv
    t0 = n_sink + window
    out = torch.zeros(B, Hkv, max(0, T - t0), dtype=torch.float32, device=query.device)
    hit = torch.zeros_like(out) if targets is not None else None
    if t0 >= T:
        return out if hit is None else (out, hit)
    q = query.reshape(B, Hkv, G, T, D)
    k = key.float()
    tb = max(1, min(T - t0, block_bytes // max(1, 4 * B * Hq * T)))
    kpos = torch.arange(T, device=query.device)
    for a in range(t0, T, tb):
        b = min(a + tb, T)
        qpos = torch.arange(a, b, device=query.device)[:, None]  # (tb, 1)
        s = torch.einsum("bgrtd,bgkd->bgrtk", q[:, :, :, a:b].float(), k[:, :, :b]) * scaling  # (B,Hkv,G,tb,b)
        if softcap is not None:
            s = torch.tanh(s / softcap) * softcap
        visible = kpos[:b] <= qpos
        if sliding_window is not None:
            visible &= qpos - kpos[:b] < sliding_window
        p = torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1)
        band = (kpos[:b] < n_sink) | (kpos[:b] > qpos - window)  # (tb, b)
        out[:, :, a - t0 : b - t0] = (p * band).sum(-1).mean(2)  # sum over band keys, mean over the group
        if hit is not None:
            tgt = targets[a:b].to(query.device)  # (tb,)
            idx = tgt.clamp(min=0).view(1, 1, 1, -1, 1).expand(B, Hkv, G, -1, 1)
            hit[:, :, a - t0 : b - t0] = (p.gather(-1, idx)[..., 0] * (tgt >= 0)).mean(2)
    return out if hit is None else (out, hit)


def needle_share(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    rows: int,
    span: tuple[int, int],
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Per KV head, the attention the last `rows` queries put on the keys span[0]..span[1]-1.

    query: (B, Hq, T, D), key: (B, Hkv, T, D), post-RoPE, one unpadded causal sequence per row (the
    needle prompt followed by its answer, teacher-forced: the last `rows` queries write the answer).
    Returns (B, Hkv) float32: the mean over those queries of their probability on the span, then the
    max over the KV head's query heads (one query head that reads the needle is enough for the KV
    head to be needed whole). Exact softmax in float32; only the answer rows are scored.
    """
    B, Hq, T, D = query.shape
    Hkv = key.shape[1]
    if Hq % Hkv:
        raise SinkholeError(f"{Hq} query heads do not group over {Hkv} KV heads")
    G = Hq // Hkv
    q = query[:, :, T - rows :].reshape(B, Hkv, G, rows, D).float()
    s = torch.einsum("bgrtd,bgkd->bgrtk", q, key.float()) * scaling  # (B, Hkv, G, rows, T)
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    kpos = torch.arange(T, device=query.device)
    qpos = kpos[T - rows :, None]
    visible = kpos <= qpos
    if sliding_window is not None:
        visible &= qpos - kpos < sliding_window
    p = torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1)
    return p[..., span[0] : span[1]].sum(-1).mean(-1).amax(2)


def attention_modules(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """layer index -> the module that calls the attention interface (it has `layer_idx` and `scaling`)."""
    found = {}
    for _, m in model.named_modules():
        if hasattr(m, "layer_idx") and hasattr(m, "scaling") and m.layer_idx not in found:
            found[int(m.layer_idx)] = m
    return found


def layer_kinds(model: torch.nn.Module) -> tuple[list[str], list[int | None]]:
    """Per layer: 'global' or 'sliding', and the sliding window (None for global layers)."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    config = model.config.get_text_config(decoder=True)
    types, kwargs = get_layer_types_and_kwargs(config)
    kinds, windows = [], []
    for t, kw in zip(types, kwargs):
        if t == "full_attention":
            kinds.append("global"), windows.append(None)
        elif t in ("sliding_attention", "chunked_attention") and kw.get("sliding_window"):
            kinds.append("sliding"), windows.append(int(kw["sliding_window"]))
        else:
            raise SinkholeError(f"streaming scores do not support '{t}' layers")
    return kinds, windows


@dataclass
class CopyPrompt:
    """Token ids (1, N) of text with random spans that repeat: spans[i] = (first, second, length)."""

    ids: torch.Tensor
    spans: list[tuple[int, int, int]]


def copy_prompt(
    tokenizer,
    n_tokens: int,
    span: int = 32,
    n_spans: int = 4,
    distance: int | None = None,
    seed: int = 0,
    text: str | None = None,
) -> CopyPrompt:
    """N tokens of Python documentation with `n_spans` random-token spans, each repeated `distance` later.

    The first occurrences sit evenly in the first part of the stream after 64 tokens of text, the
    second ones `distance` tokens after them (default: as far as fits). Span tokens are drawn from
    the token ids that occur in the text itself (real tokens, no special ids); a different `seed`
    draws different spans and a different stretch of text.
    """
    from sinkhole.text import pydoc_text

    text = text if text is not None else pydoc_text()
    rng = random.Random(seed)
    all_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    lead = tokenizer("", add_special_tokens=True)["input_ids"]  # BOS, when the tokenizer adds one
    body = n_tokens - len(lead)
    if len(all_ids) < body + 1 or n_tokens < 2 * n_spans * span + 128:
        raise SinkholeError(f"cannot fit {n_spans} repeated spans of {span} tokens in {n_tokens} tokens")
    start = rng.randrange(0, len(all_ids) - body)
    ids = list(lead) + all_ids[start : start + body]
    pool = sorted(set(all_ids))
    first_zone, step = 64 + len(lead), 2 * span  # spans separated by a span of text
    last_first = first_zone + (n_spans - 1) * step
    if distance is None:
        distance = n_tokens - span - last_first - 8
    if distance < last_first - first_zone + span or last_first + distance + span > n_tokens:
        raise SinkholeError(f"cannot fit {n_spans} spans of {span} tokens {distance} apart in {n_tokens} tokens")
    spans = []
    for i in range(n_spans):
        p1 = first_zone + i * step
        toks = [rng.choice(pool) for _ in range(span)]
        ids[p1 : p1 + span] = toks
        ids[p1 + distance : p1 + distance + span] = toks
        spans.append((p1, p1 + distance, span))
    return CopyPrompt(torch.tensor([ids]), spans)


def copy_queries(spans, n_tokens: int) -> torch.Tensor:
    """(T,) bool: the queries that must retrieve, one per token of a second occurrence but its last.

    The query at position p2 + i - 1 predicts token p2 + i, a copy of p1 + i (i = 1..span-1).
    """
    sel = torch.zeros(n_tokens, dtype=torch.bool)
    for _, p2, span in spans:
        sel[p2 : p2 + span - 1] = True
    return sel


def copy_targets(spans, n_tokens: int) -> torch.Tensor:
    """(T,) long: for each copy query, the key it should retrieve (p1 + i for query p2 + i - 1), else -1."""
    tgt = torch.full((n_tokens,), -1, dtype=torch.long)
    for p1, p2, span in spans:
        tgt[p2 : p2 + span - 1] = torch.arange(p1 + 1, p1 + span)
    return tgt
