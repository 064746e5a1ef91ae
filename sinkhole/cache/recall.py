"""Copy recall through bounded caches: does a cache remember a span it saw far outside its window?

The stream (`sinkhole.profiles.stream_scores.copy_prompt`): Python documentation text with `n_spans`
spans of random tokens, each repeated `distance` tokens later (default: as far as the stream
allows, beyond every window compared here). The text is the held-out half of the documentation
(`sinkhole.text.HELD_OUT_HALF`): the profiles' streaming scores, which rank the heads, are
calibrated on the other half. A model with full attention predicts most tokens of
a second occurrence (an induction copy); a cache that evicted the first occurrence cannot.

    recall       teacher-forced top-1 accuracy on the second occurrences' tokens 2..span (the first
                 token of a span cannot be inferred)
    recall_first the same on the first occurrences: the chance level, random tokens being unguessable
    ppl_text     perplexity on every other token (the text around the spans)
    kv_share     key slots held after the whole stream / dense's (the policy's memory)
    kv_bytes     bytes the cache allocated at the end of the stream (`cache.kv_bytes()`, buffers'
                 spare capacity and bookkeeping included; dense: DynamicCache's tensors)
    bytes_share  kv_bytes / dense_bytes, dense_bytes a dense cache's keys and values at the stream's
                 length (`head_plan.MemoryPlan.dense_bytes`): the share `budget` bounds

Methods, all at about `budget` x dense's KV memory except dense:
    dense       DynamicCache, full attention
    window      the most recent C tokens in every head (C: the largest uniform size within budget)
    sinks       the first n_sink tokens + the most recent C - n_sink, every head (StreamingLLM's policy)
    head_aware  HeadAwareSinkCache.from_profile: the heads its ranking puts first keep everything,
                the others n_sink + `local_sinks` + `window`
    random      the same number of full heads per layer kind, picked at random (the control), once
                per random seed: the row holds the means over the seeds, `detail["seeds"]` every
                seed's own numbers and `detail["recall_range"]` / `detail["ppl_range"]` their extremes

Every method runs the same chunked forwards (chunks of `chunk` tokens; the head-aware masks make a
chunk exact), so their seconds compare like with like. Window and sinks use HeadAwareSinkCache with
no retrieval heads: sinks keep their positions (no re-rotation), which is exact within the trained
context, the regime of this test.

The result is typed in sinkhole.results.stream_recall (`RecallResult`, schema "sinkhole.recall/1"): what
`sinkhole stream --recall` writes; sinkhole.render.recall_text prints it.
"""

from __future__ import annotations

import time

import torch

from sinkhole.cache.head_plan import DEFAULT_LOCAL_SINKS, DEFAULT_RANK_BY, DEFAULT_WINDOW
from sinkhole.errors import SinkholeError
from sinkhole.experiments.perplexity import perplexity_from_nll
from sinkhole.results.stream_recall import RecallDetail, RecallResult, RecallRow, RecallSeed, RecallSettings

LABELS = {
    "dense": "dense (full attention)",
    "window": "window only",
    "sinks": "sinks + window",
    "head_aware": "head-aware (profile)",
    "random": "head-aware (random heads)",
}


def uniform_size(kinds, windows, n_heads: int, budget: float, length: int) -> int:
    """The largest cache size C (keys per head) with every head at C keys within budget x dense."""
    from sinkhole.cache.head_plan import slot_costs

    _, full = slot_costs(kinds, windows, 0, 1, length)
    dense = n_heads * sum(full)
    lo, hi = 1, length
    while lo < hi:  # slots grow with C: binary search the largest fitting C
        mid = (lo + hi + 1) // 2
        stream, _ = slot_costs(kinds, windows, 0, mid, length)
        lo, hi = (mid, hi) if n_heads * sum(stream) <= budget * dense else (lo, mid - 1)
    return lo


@torch.inference_mode()
def run_cache(model, ids: torch.Tensor, cache, chunk: int) -> torch.Tensor:
    """Logits' top-1 ids and nll for every position through `cache`: (pred (N-1,), nll (N-1,))."""
    from sinkhole.cache.head_aware import head_aware_attention

    preds, nlls = [], []
    n = ids.shape[1]
    with head_aware_attention(model):
        for s in range(0, n - 1, chunk):
            e = min(s + chunk, n - 1)
            logits = model(ids[:, s:e], cache=cache, use_cache=True).logits[0].float()
            preds.append(logits.argmax(-1))
            nlls.append(torch.nn.functional.cross_entropy(logits, ids[0, s + 1 : e + 1], reduction="none"))
    return torch.cat(preds).cpu(), torch.cat(nlls).cpu()


def _scores(pred: torch.Tensor, nll: torch.Tensor, ids: torch.Tensor, spans) -> tuple[float, float, list[int]]:
    """(hits on second occurrences, hits on first occurrences, text positions j (nll index j-1))."""
    target = ids[0, 1:].cpu()
    second, first, in_span = [], [], set()
    for p1, p2, span in spans:
        for i in range(1, span):  # predicting token p + i from the tokens before it
            first.append(int(pred[p1 + i - 1] == target[p1 + i - 1]))
            second.append(int(pred[p2 + i - 1] == target[p2 + i - 1]))
        in_span |= set(range(p1, p1 + span)) | set(range(p2, p2 + span))
    text = [j for j in range(1, ids.shape[1]) if j not in in_span]
    return sum(second) / len(second), sum(first) / len(first), text


def evaluate_recall(
    lm,
    profile,
    n_tokens: int = 2048,
    budget: float = 0.5,
    window: int = DEFAULT_WINDOW,
    n_sink: int | None = None,
    span: int = 32,
    n_spans: int = 4,
    seeds: tuple[int, ...] = (0,),
    chunk: int = 64,
    random_seeds: tuple[int, ...] = (0, 1, 2),
    methods: tuple[str, ...] | None = None,
    rank_by: str = DEFAULT_RANK_BY,
    local_sinks: int = DEFAULT_LOCAL_SINKS,
    progress=None,
    log=None,
) -> RecallResult:
    """Every method on `len(seeds)` copy streams of n_tokens; recall and ppl pooled over the streams.
    The random-heads control runs once per seed of `random_seeds`. log: called with each head-aware
    plan's one-line summary (`MemoryPlan.line`) before any forward."""

    from transformers import DynamicCache

    from sinkhole.cache.head_aware import HeadAwareSinkCache, kv_head_count, kv_slot_bytes
    from sinkhole.cache.head_plan import slot_costs
    from sinkhole.profiles.stream_scores import copy_prompt, layer_kinds
    from sinkhole.text import HELD_OUT_HALF, pydoc_source, pydoc_text

    model = lm.model
    if lm.max_context and n_tokens > lm.max_context:
        raise SinkholeError(f"{n_tokens} tokens is past {lm.name}'s context of {lm.max_context}")
    if not 0 < budget <= 1:
        raise SinkholeError(f"--budget is a share of dense KV memory in (0, 1] (got {budget})")
    kinds, windows = layer_kinds(model)
    H = kv_head_count(model)
    if n_sink is None:  # the sinks the profile's scores were measured with
        n_sink = int((getattr(profile, "streaming", None) or {}).get("n_sink", 4))
    _, full = slot_costs(kinds, windows, 0, 1, n_tokens)
    dense_slots = H * sum(full)
    dense_bytes = dense_slots * kv_slot_bytes(model)[0]
    if not random_seeds and (methods is None or "random" in methods):
        raise SinkholeError("the random-heads control needs at least one seed")
    C = uniform_size(kinds, windows, H, budget, n_tokens)
    if C <= n_sink + 1:
        raise SinkholeError(f"budget {budget:.0%} leaves {C} keys per head: too few for {n_sink} sinks + a window")
    none = [[] for _ in kinds]
    plan = dict(window=window, budget=budget, length=n_tokens, n_sink=n_sink, rank_by=rank_by, local_sinks=local_sinks)
    makers = {
        "dense": [lambda: DynamicCache(config=model.config)],
        "window": [lambda: HeadAwareSinkCache(none, 0, C, model=model, length=n_tokens)],
        "sinks": [lambda: HeadAwareSinkCache(none, n_sink, C - n_sink, model=model, length=n_tokens)],
        "head_aware": [lambda: HeadAwareSinkCache.from_profile(profile, model=model, **plan)],
        "random": [
            lambda seed=seed: HeadAwareSinkCache.from_profile(profile, model=model, random_heads=seed, **plan)
            for seed in random_seeds
        ],
    }
    if methods is not None:
        unknown = sorted(set(methods) - set(makers))
        if unknown:
            raise SinkholeError(f"unknown recall methods {unknown} (known: {', '.join(makers)})")
        makers = {k: v for k, v in makers.items() if k in methods}
    for name in ("head_aware", "random"):  # a plan that cannot fit fails here, before any forward
        for make in makers.get(name, ())[:1]:
            cache = make()
            if log and name == "head_aware":
                log(cache.memory_plan.line())
    if log and "random" in makers:
        log(f"random-heads control: seeds {', '.join(map(str, random_seeds))}, the same heads per layer kind")
    text_half = pydoc_text(half=HELD_OUT_HALF)
    streams = [copy_prompt(lm.tokenizer, n_tokens, span=span, n_spans=n_spans, seed=s, text=text_half) for s in seeds]
    rows = []
    for name, makes in makers.items():
        runs = [_run_method(model, lm.device, streams, make, chunk, progress) for make in makes]
        seeds_of = random_seeds if name == "random" else None
        rows.append(_row(name, runs, seeds_of, dense_slots, dense_bytes))
    return RecallResult(
        model=lm.name,
        n_tokens=n_tokens,
        budget=budget,
        window=window,
        n_sink=n_sink,
        uniform_cache=C,
        dense_bytes=dense_bytes,
        spans=[[list(s) for s in cp.spans] for cp in streams],
        rows=rows,
        settings=RecallSettings(
            span=span,
            n_spans=n_spans,
            seeds=list(seeds),
            chunk=chunk,
            rank_by=rank_by,
            local_sinks=local_sinks,
            random_seeds=list(random_seeds),
            text=pydoc_source(HELD_OUT_HALF),
            dtype=str(lm.dtype).replace("torch.", ""),
            device=str(lm.device),
        ),
    )


def _run_method(model, device, streams, make, chunk: int, progress) -> dict:
    """One cache policy over every stream (a fresh cache each): recall and ppl pooled over the streams,
    the last stream's memory (slots, bytes; every stream has the same length), seconds summed."""
    from sinkhole.cache.head_aware import HeadAwareSinkCache
    from sinkhole.cache.sink_cache import cache_nbytes

    hits2, hits1, nll_text, secs = [], [], [], 0.0
    out: dict = dict(detail={})
    for cp in streams:
        cache = make()
        t0 = time.perf_counter()
        pred, nll = run_cache(model, cp.ids.to(device), cache, chunk)
        secs += time.perf_counter() - t0
        r2, r1, text = _scores(pred, nll, cp.ids, cp.spans)
        hits2.append(r2), hits1.append(r1)
        nll_text += [float(nll[j - 1]) for j in text]
        if isinstance(cache, HeadAwareSinkCache):
            out.update(slots=cache.used_slots(), nbytes=cache.kv_bytes())
            out["detail"] = dict(
                retrieval_heads=sum(map(len, cache.retrieval)),
                kv_heads=cache.n_kv_heads * len(cache.layers),
                retrieval=cache.retrieval,
            )
            if cache.memory_plan is not None:
                out["detail"]["plan"] = cache.memory_plan.to_dict()
        else:
            out.update(nbytes=cache_nbytes(cache))
        if progress:
            progress(1)
    out.update(
        recall=sum(hits2) / len(hits2),
        recall_first=sum(hits1) / len(hits1),
        ppl_text=perplexity_from_nll(sum(nll_text), len(nll_text)),
        seconds=round(secs, 2),
    )
    return out


def _row(name: str, runs: list[dict], seeds, dense_slots: int, dense_bytes: int) -> RecallRow:
    """One method's row from its runs (`_run_method`): one run, or one per random seed (`seeds`), whose
    means the row holds and whose own numbers and extremes go in `detail`."""
    for r in runs:
        r.setdefault("slots", dense_slots)  # dense holds every slot
    mean = {k: sum(r[k] for r in runs) / len(runs) for k in ("recall", "recall_first", "ppl_text", "slots", "nbytes")}
    detail = RecallDetail(**runs[0]["detail"])
    if seeds is not None:
        keys = ("recall", "recall_first", "ppl_text", "nbytes", "slots", "seconds")
        detail.retrieval = None  # per seed:
        detail.seeds = [
            RecallSeed(seed=seed, **{k: round(r[k], 4) for k in keys}, retrieval=r["detail"]["retrieval"])
            for seed, r in zip(seeds, runs)
        ]
        detail.recall_range, detail.ppl_range = (
            [round(min(r[key] for r in runs), 4), round(max(r[key] for r in runs), 4)]
            for key in ("recall", "ppl_text")
        )
    slots, nbytes = round(mean["slots"]), round(mean["nbytes"])
    return RecallRow(
        name,
        LABELS[name],
        round(mean["recall"], 4),
        round(mean["recall_first"], 4),
        round(mean["ppl_text"], 4),
        slots,
        round(slots / dense_slots, 4),
        nbytes,
        round(nbytes / dense_bytes, 4),
        round(sum(r["seconds"] for r in runs), 2),
        detail,
    )
