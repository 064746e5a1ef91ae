"""Per-head streaming scores of a model: the forward that measures them (definitions in
`sinkhole.profiles.stream_scores`, which also builds the copy prompts).

`measure_streaming_scores` runs each prompt once under the probe's recorder with a tap
(`sinkhole.probe.recorder.tapped`) that calls the pure `band_share` on every layer's post-RoPE
queries and keys; `measure_needle_scores` does the same with `needle_share` over needle prompts
(`needle_prompts`: kv-bench's generators on the calibration text); `streaming_section` is the
profile's `streaming` section over the built-in copy prompts and needle prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sinkhole.errors import SinkholeError
from sinkhole.probe.recorder import Recorder, recording, tapped
from sinkhole.profiles.profile import SCORE_WINDOW
from sinkhole.profiles.stream_scores import (
    CopyPrompt,
    attention_modules,
    band_share,
    copy_prompt,
    copy_queries,
    copy_targets,
    layer_kinds,
    needle_share,
)
from sinkhole.text import CALIBRATION_HALF, pydoc_source


@torch.inference_mode()
def measure_streaming_scores(
    lm, prompts: list, n_sink: int, window: int = SCORE_WINDOW, progress=None, world=None
) -> dict:
    """Streaming scores [L][Hkv] of a LoadedModel over prompts, via a recorder tap.

    prompts: `CopyPrompt`s (or token-id tensors (1, T), which have no copy queries).
    Returns the profile's `streaming` section: {n_sink, window, layer_kinds, scores [L][Hkv] (mean
    share over all eligible queries), copy_scores [L][Hkv] (the same over the copy queries only:
    where a retrieval is needed; null without copy prompts), retrieval_scores [L][Hkv] (mean
    probability on the token to copy at the copy queries: Wu et al.'s retrieval heads, 2024; null
    without copy prompts), queries, copy_queries}.
    world (sinkhole.distributed): the ranks share the prompts; every prompt's sums are added in prompt
    order, so the scores are one process's to the last bit.
    """
    from sinkhole.distributed import World

    world = world or World()
    kinds, _ = layer_kinds(lm.model)
    L = len(kinds)
    lengths = getattr(prompts, "lengths", None) or [getattr(p, "ids", p).shape[1] for p in prompts]
    for n in lengths:
        if n <= n_sink + window:
            raise SinkholeError(f"a {n}-token prompt is too short for sinks {n_sink} + window {window}")
    tally = world.tally(progress)
    parts = {}
    for i in world.shard(lengths):
        parts[i] = _prompt_sums(lm, prompts[i], n_sink, window)
        tally.step(1)
    tally.wait()
    every = {i: part for gathered in world.gather(parts) for i, part in gathered.items()}
    sums, copy_sums, hit_sums = [0.0] * L, [0.0] * L, [0.0] * L
    counts, copy_counts = [0] * L, [0] * L
    for i in range(len(prompts)):
        part = every[i]
        for layer in range(L):
            sums[layer] = sums[layer] + part["sums"][layer]
            copy_sums[layer] = copy_sums[layer] + part["copy_sums"][layer]
            hit_sums[layer] = hit_sums[layer] + part["hit_sums"][layer]
            counts[layer] += part["counts"][layer]
            copy_counts[layer] += part["copy_counts"][layer]

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


def _prompt_sums(lm, prompt, n_sink: int, window: int) -> dict:
    """One prompt's per-layer sums of band shares (all eligible queries, copy queries) and of copy
    hits, with their query counts: what measure_streaming_scores adds up over prompts."""
    model = lm.model
    kinds, windows = layer_kinds(model)
    mods = attention_modules(model)
    L = len(kinds)
    out = {k: [0.0] * L for k in ("sums", "copy_sums", "hit_sums")}
    out.update(counts=[0] * L, copy_counts=[0] * L)
    ids = getattr(prompt, "ids", prompt)
    spans = getattr(prompt, "spans", [])
    selected = [copy_queries(spans, ids.shape[1]), copy_targets(spans, ids.shape[1])]

    def tap(layer, query, key, value):
        S = 0 if kinds[layer] == "sliding" else n_sink
        softcap = getattr(mods[layer], "attn_logit_softcapping", None) if layer in mods else None
        scaling = mods[layer].scaling if layer in mods else query.shape[-1] ** -0.5
        share, hit = band_share(query, key, scaling, S, window, windows[layer], softcap, targets=selected[1])
        share, hit = share.sum(0).cpu(), hit.sum(0).cpu()  # (Hkv, T - t0)
        out["sums"][layer] = out["sums"][layer] + share.sum(-1)
        out["counts"][layer] += share.shape[-1] * query.shape[0]
        sel = selected[0][S + window :]
        out["copy_sums"][layer] = out["copy_sums"][layer] + share[:, sel].sum(-1)
        out["hit_sums"][layer] = out["hit_sums"][layer] + hit[:, sel].sum(-1)
        out["copy_counts"][layer] += int(sel.sum()) * query.shape[0]

    rec = Recorder(L, torch.ones(ids.shape, dtype=torch.bool))
    with recording(model, lm.family, rec), tapped(rec, tap):
        model(input_ids=ids.to(lm.device), use_cache=False, logits_to_keep=1)
    return out


DEFAULT_SINKS, DEFAULT_PROMPTS, DEFAULT_TOKENS = 4, 8, 1024


class StreamingPrompts(Sequence):
    """The profile's long-range prompt set: `count` copy prompts with different spans and text, each
    built when it is read (one tokenization of the text each), so a large count costs nothing
    before the first forward. `lengths`: every prompt's token count, known without building it.

    Calibration apart from evaluation: the prompts are built from the calibration half of Python's
    documentation (`sinkhole.text.CALIBRATION_HALF`) with seeds `seed`..`seed + count - 1` (0-7 by
    default); `stream --recall` and kv-bench evaluate on the other half (docs/cache.md)."""

    def __init__(self, tokenizer, count: int, n_tokens: int, span: int = 32, seed: int = 0):
        from sinkhole.text import CALIBRATION_HALF, pydoc_source, pydoc_text

        self.tokenizer, self.count, self.n_tokens, self.span, self.seed = tokenizer, count, n_tokens, span, seed
        self.lengths = [n_tokens] * count  # copy_prompt returns exactly n_tokens
        self.text, self.source = pydoc_text(half=CALIBRATION_HALF), pydoc_source(CALIBRATION_HALF)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> CopyPrompt:
        if not 0 <= i < self.count:
            raise IndexError(i)
        return copy_prompt(
            self.tokenizer, self.n_tokens, span=self.span, n_spans=4, seed=self.seed + i, text=self.text
        )


def streaming_prompts(
    tokenizer, count: int = DEFAULT_PROMPTS, n_tokens: int = DEFAULT_TOKENS, span: int = 32, seed: int = 0
) -> StreamingPrompts:
    """The profile's long-range prompt set (`StreamingPrompts`, built lazily)."""
    return StreamingPrompts(tokenizer, count, n_tokens, span, seed)


def streaming_section(
    lm,
    n_sink: int = DEFAULT_SINKS,
    window: int = SCORE_WINDOW,
    count: int = DEFAULT_PROMPTS,
    n_tokens: int = DEFAULT_TOKENS,
    progress=None,
    world=None,
    needles: list | None = None,
) -> dict:
    """The profile's `streaming` section for a LoadedModel, over the built-in copy prompts, with the
    needle scores over `needles` (default: `needle_prompts` at the `needle_lengths` that fit), both
    shared by the ranks of `world` (sinkhole.distributed). progress(n) hears of both passes'
    prompts, the copy prompts first."""
    prompts = streaming_prompts(lm.tokenizer, count, n_tokens)
    out = measure_streaming_scores(lm, prompts, n_sink, window, progress, world)
    needles = needle_prompts(lm.tokenizer, needle_lengths(lm.model)) if needles is None else needles
    out.update(measure_needle_scores(lm, needles, progress, world))
    out["needle"] = {
        "source": "kv-bench's niah, multikey and passkey generators (sinkhole.long_tasks), answer teacher-forced",
        "text": pydoc_source(CALIBRATION_HALF),
        "seed_base": 0,
        "lengths": sorted({n.length for n in needles}),
        "span": f"the needle's value, its {NEEDLE_LEAD} tokens before and 2 after",
    }
    out["prompts"] = {
        "source": "pydoc text + repeated random spans (sinkhole.profiles.stream_scores.copy_prompt)",
        "text": prompts.source,
        "seeds": [prompts.seed, prompts.seed + count - 1],
        "count": count,
        "n_tokens": n_tokens,
        "spans": [list(s) for s in prompts[0].spans],
    }
    return out


# The profile's needle prompts (kv-bench's generators on the calibration half, seeds from 0): per
# length, a NIAH grid of 5 depths, 3 multi-key and 3 passkey prompts.
NEEDLE_TASKS, NEEDLE_LENGTHS, NEEDLE_LEAD = (("niah", 1), ("multikey", 3), ("passkey", 3)), (1024, 2048), 8


def needle_lengths(model) -> tuple[int, ...]:
    """NEEDLE_LENGTHS that fit the model's context with their answer (a short context: half of it)."""
    ctx = getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None) or 4096
    fit = tuple(n for n in NEEDLE_LENGTHS if n + 16 <= ctx)
    return fit or ((ctx // 2,) if ctx >= 512 else ())


def needle_prompts(tokenizer, lengths=NEEDLE_LENGTHS) -> list:
    """kv-bench `Sample`s built from the calibration half of the text with seeds 0.. (kv-bench's own
    are the other half, seeds from 1000): the prompts the needle scores are measured on. A task a
    tokenizer cannot build (a word-level vocabulary has no ids for the numbers, so the answer is
    never unique) is left out."""
    from sinkhole.long_tasks import Encoder, make_samples

    enc = Encoder(tokenizer, half=CALIBRATION_HALF)
    out = []
    for n in lengths:
        for task, seeds in NEEDLE_TASKS:
            try:
                out += make_samples(enc, task, n, 5, seeds, 0)
            except SinkholeError:
                continue
    return out


@torch.inference_mode()
def measure_needle_scores(lm, samples: list, progress=None, world=None) -> dict:
    """Per (layer, KV head), the attention a model's answer positions put on the needle they copy.

    Each sample (kv-bench `Sample`: a needle prompt and its answer) is read once with its answer
    teacher-forced; a tap on every layer scores the answer rows (`needle_share`, over the needle's
    lead-in, value and end). Samples the model answers wrong are left out: they say nothing about where
    it reads. Returns {needle_scores [L][Hkv] (mean over the answered samples; null when none is),
    needle_prompts (answered), needle_asked}. world: the ranks share the samples; sums are added in
    sample order, so the scores are one process's to the last bit."""
    from sinkhole.distributed import World

    world = world or World()
    tally = world.tally(progress)
    parts = {}
    for i in world.shard([len(s.ids) + len(s.answer) for s in samples]):
        parts[i] = _needle_sums(lm, samples[i])
        tally.step(1)
    tally.wait()
    every = {i: part for gathered in world.gather(parts) for i, part in gathered.items()}
    answered = [every[i] for i in range(len(samples)) if every[i] is not None]
    total = None
    for part in answered:
        total = part if total is None else total + part
    scores = None if total is None else [[round(float(v), 5) for v in row] for row in total / len(answered)]
    return dict(needle_scores=scores, needle_prompts=len(answered), needle_asked=len(samples))


def _needle_sums(lm, sample) -> torch.Tensor | None:
    """(L, Hkv) needle shares of one sample, None when the model's teacher-forced answer is wrong."""
    model = lm.model
    kinds, windows = layer_kinds(model)
    mods = attention_modules(model)
    A = len(sample.answer)
    ids = torch.tensor([sample.ids + sample.answer[:-1]])
    span = (max(0, sample.where - NEEDLE_LEAD), sample.where + A + 2)
    out: list = [None] * len(kinds)

    def tap(layer, query, key, value):
        softcap = getattr(mods[layer], "attn_logit_softcapping", None) if layer in mods else None
        scaling = mods[layer].scaling if layer in mods else query.shape[-1] ** -0.5
        out[layer] = needle_share(query, key, scaling, A, span, windows[layer], softcap)[0].cpu()

    rec = Recorder(len(kinds), torch.ones(ids.shape, dtype=torch.bool))
    with recording(model, lm.family, rec), tapped(rec, tap):
        logits = model(input_ids=ids.to(lm.device), use_cache=False, logits_to_keep=A).logits
    if logits[0].argmax(-1).tolist() != sample.answer:
        return None
    return torch.stack(out)
