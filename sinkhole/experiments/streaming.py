"""Per-head streaming scores of a model: the forward that measures them (definitions in
`sinkhole.profiles.streaming`, which also builds the copy prompts).

`measure_streaming_scores` runs each prompt once under the probe's recorder with a tap
(`sinkhole.probe.recorder.tapped`) that calls the pure `band_share` on every layer's post-RoPE
queries and keys; `streaming_section` is the profile's `streaming` section over the built-in
copy prompts.
"""

from __future__ import annotations

import torch

from sinkhole.errors import SinkholeError
from sinkhole.probe.recorder import Recorder, recording, tapped
from sinkhole.profiles.streaming import (
    DEFAULT_WINDOW,
    CopyPrompt,
    attention_modules,
    band_share,
    copy_prompt,
    copy_queries,
    copy_targets,
    layer_kinds,
)


@torch.inference_mode()
def measure_streaming_scores(lm, prompts: list, n_sink: int, window: int = DEFAULT_WINDOW, progress=None) -> dict:
    """Streaming scores [L][Hkv] of a LoadedModel over prompts, via a recorder tap.

    prompts: `CopyPrompt`s (or token-id tensors (1, T), which have no copy queries).
    Returns the profile's `streaming` section: {n_sink, window, layer_kinds, scores [L][Hkv] (mean
    share over all eligible queries), copy_scores [L][Hkv] (the same over the copy queries only:
    where a retrieval is needed; null without copy prompts), retrieval_scores [L][Hkv] (mean
    probability on the token to copy at the copy queries: Wu et al.'s retrieval heads, 2024; null
    without copy prompts), queries, copy_queries}.
    """
    model = lm.model
    kinds, windows = layer_kinds(model)
    mods = attention_modules(model)
    L = len(kinds)
    sums = [0.0] * L
    copy_sums = [0.0] * L
    hit_sums = [0.0] * L
    counts, copy_counts = [0] * L, [0] * L
    selected: list[torch.Tensor] = []

    def tap(layer, query, key, value):
        S = 0 if kinds[layer] == "sliding" else n_sink
        softcap = getattr(mods[layer], "attn_logit_softcapping", None) if layer in mods else None
        scaling = mods[layer].scaling if layer in mods else query.shape[-1] ** -0.5
        share, hit = band_share(query, key, scaling, S, window, windows[layer], softcap, targets=selected[1])
        share, hit = share.sum(0).cpu(), hit.sum(0).cpu()  # (Hkv, T - t0)
        sums[layer] = sums[layer] + share.sum(-1)
        counts[layer] += share.shape[-1] * query.shape[0]
        sel = selected[0][S + window :]
        copy_sums[layer] = copy_sums[layer] + share[:, sel].sum(-1)
        hit_sums[layer] = hit_sums[layer] + hit[:, sel].sum(-1)
        copy_counts[layer] += int(sel.sum()) * query.shape[0]

    for prompt in prompts:
        ids = getattr(prompt, "ids", prompt)
        spans = getattr(prompt, "spans", [])
        if ids.shape[1] <= n_sink + window:
            raise SinkholeError(f"a {ids.shape[1]}-token prompt is too short for sinks {n_sink} + window {window}")
        selected[:] = [copy_queries(spans, ids.shape[1]), copy_targets(spans, ids.shape[1])]
        rec = Recorder(L, torch.ones(ids.shape, dtype=torch.bool))
        with recording(model, lm.family, rec), tapped(rec, tap):
            model(input_ids=ids.to(lm.device), use_cache=False, logits_to_keep=1)
        if progress:
            progress(1)

    def mean(total, n):
        return [round(float(v) / n, 5) for v in total] if n else None

    copy = [mean(copy_sums[l], copy_counts[l]) for l in range(L)]
    hits = [mean(hit_sums[l], copy_counts[l]) for l in range(L)]
    return dict(
        n_sink=n_sink,
        window=window,
        layer_kinds=kinds,
        scores=[mean(sums[l], counts[l]) for l in range(L)],
        copy_scores=copy if all(c is not None for c in copy) else None,
        retrieval_scores=hits if all(c is not None for c in hits) else None,
        queries=counts[kinds.index("global")] if "global" in kinds else counts[0],
        copy_queries=max(copy_counts),
    )


DEFAULT_SINKS, DEFAULT_PROMPTS, DEFAULT_TOKENS = 4, 8, 1024


def streaming_prompts(
    tokenizer, count: int = DEFAULT_PROMPTS, n_tokens: int = DEFAULT_TOKENS, span: int = 32, seed: int = 0
) -> list[CopyPrompt]:
    """The profile's long-range prompt set: `count` copy prompts with different spans and text."""
    return [copy_prompt(tokenizer, n_tokens, span=span, n_spans=4, seed=seed + i) for i in range(count)]


def streaming_section(
    lm,
    n_sink: int = DEFAULT_SINKS,
    window: int = DEFAULT_WINDOW,
    count: int = DEFAULT_PROMPTS,
    n_tokens: int = DEFAULT_TOKENS,
    progress=None,
) -> dict:
    """The profile's `streaming` section for a LoadedModel, over the built-in copy prompts."""
    prompts = streaming_prompts(lm.tokenizer, count, n_tokens)
    out = measure_streaming_scores(lm, prompts, n_sink, window, progress)
    out["prompts"] = {
        "source": "pydoc text + repeated random spans (sinkhole.profiles.streaming.copy_prompt)",
        "count": count,
        "n_tokens": n_tokens,
        "spans": [list(s) for s in prompts[0].spans],
    }
    return out
