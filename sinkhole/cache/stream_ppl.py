"""Long-text perplexity of streaming caches, as the StreamingLLM paper evaluates it.

The text is fed one token at a time; at each step the model predicts the next token from what its
cache holds. `nll[j-1] = -log p(x_j | cache after x_0..x_{j-1})`, natural log, for j = 1..N-1.
Methods (all but dense at the same attention budget of `cache_size` keys per global layer):

    dense      full attention over everything so far (transformers' DynamicCache), while the
               text fits the model's trained context. Computed by chunked forwards through a
               DynamicCache: the same computation as decoding token by token (up to float
               rounding), much faster.
    window     the `cache_size` most recent tokens, no sinks (SinkCache with no pinned slots).
    sinks      the first `n_sink` tokens + the `cache_size - n_sink` most recent (StreamingLLM).
    profile    the positions a SinkProfile pins + the most recent tokens, same budget.
    recompute  sliding window with recomputation: the model is run from scratch on the last
               `cache_size` tokens (positions 0..cache_size-1) for each scored position; the
               quality reference, computed on a sample of positions since it costs
               cache_size tokens of compute per token.

Perplexity = exp(mean nll) over the positions a method scored. Reported over all scored
positions, over positions past the cache (the fed token t = j-1 >= cache_size: the cache has
evicted before predicting x_j), and over
the recompute sample (the only like-for-like comparison with the reference). The result, with
these summary rows, is `sinkhole.results.stream.StreamResult` (schema "sinkhole.stream/1").
"""

from __future__ import annotations

import time

import torch

from sinkhole.errors import SinkholeError
from sinkhole.experiments.perplexity import scored_perplexity
from sinkhole.results.stream import StreamMethod, StreamResult, StreamSettings, StreamSummaryRow
from sinkhole.text import pydoc_text

# A token inside a full forward costs roughly 1/16 of a token-by-token decode step on CPU;
# used only to weight the progress bar so its time estimate holds across phases.
BATCHED_TOKEN_COST = 1 / 16
METHOD_LABELS = {
    "dense": "dense (full attention)",
    "window": "window only",
    "sinks": "sinks + window",
    "profile": "profile sinks + window",
    "recompute": "sliding window, recomputed",
}


def default_text() -> tuple[str, str]:
    """Python's own documentation (sinkhole.text), and the name to report it by."""
    return pydoc_text(), "pydoc_data.topics"


def encode_stream(tokenizer, text: str, n_tokens: int) -> torch.Tensor:
    """The first n_tokens token ids of `text` (with the tokenizer's own BOS if it adds one): (1, N)."""
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :n_tokens]
    if ids.shape[1] < n_tokens:
        raise SinkholeError(f"the text has only {ids.shape[1]} tokens; asked to stream {n_tokens}")
    return ids


def _token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V), targets (B, T) -> nll (B, T) in float32."""
    return torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")


@torch.inference_mode()
def nll_dense(model, ids: torch.Tensor, upto: int, chunk: int = 512, progress=None) -> torch.Tensor:
    """Full-attention nll for j = 1..upto-1, by chunks of `chunk` tokens through a DynamicCache."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out = []
    for s in range(0, upto, chunk):
        e = min(s + chunk, upto)
        logits = model(ids[:, s:e], cache=cache, use_cache=True).logits
        tgt_end = min(e + 1, upto)
        out.append(_token_nll(logits[:, : tgt_end - 1 - s], ids[:, s + 1 : tgt_end])[0])
        if progress:
            progress((e - s) * BATCHED_TOKEN_COST)
    return torch.cat(out)


@torch.inference_mode()
def nll_streaming(model, ids: torch.Tensor, cache, progress=None) -> torch.Tensor:
    """Token-by-token nll through `cache` (the StreamingLLM evaluation): (N-1,)."""
    n = ids.shape[1]
    out = torch.empty(n - 1)
    for t in range(n - 1):
        logits = model(ids[:, t : t + 1], cache=cache, use_cache=True).logits
        out[t] = _token_nll(logits, ids[:, t + 1 : t + 2])[0, 0]
        if progress:
            progress(1)
    return out


@torch.inference_mode()
def nll_recompute(
    model, ids: torch.Tensor, context: int, targets: list[int], batch: int = 8, progress=None
) -> torch.Tensor:
    """nll of x_j from a fresh forward over x_{j-context}..x_{j-1} (positions 0..context-1).

    targets: positions j with j >= context (so every window is full and windows batch together).
    Returns (len(targets),).
    """
    out = []
    for s in range(0, len(targets), batch):
        js = targets[s : s + batch]
        windows = torch.stack([ids[0, j - context : j] for j in js])  # (b, context)
        logits = model(windows).logits[:, -1:, :]
        out.append(_token_nll(logits, ids[0, js][:, None])[:, 0])
        if progress:
            progress(len(js) * context * BATCHED_TOKEN_COST)
    return torch.cat(out) if out else torch.empty(0)


def summary_rows(methods: dict[str, StreamMethod], cache_size: int, samples: list[int]) -> list[StreamSummaryRow]:
    """Each method's perplexity over every position it scored, past the cache (predictions made after
    the first eviction) and at the recompute sample."""
    rows = []
    for m in methods.values():
        sample = [m.nll[j - 1] for j in samples]
        rows.append(
            StreamSummaryRow(
                method=m.name,
                label=m.label,
                slots=m.slots,
                scored=m.scored(),
                ppl=scored_perplexity(m.nll),
                ppl_past_cache=scored_perplexity(m.nll[cache_size:]),
                ppl_sample=scored_perplexity(sample),
            )
        )
    return rows


def _floats(t: torch.Tensor, n: int, offset: int = 0) -> list[float | None]:
    vals: list[float | None] = [None] * n
    for i, v in enumerate(t.tolist()):
        vals[offset + i] = round(v, 5)
    return vals


def sample_targets(n_tokens: int, cache_size: int, samples: int) -> list[int]:
    """Up to `samples` evenly spaced positions j in (cache_size, n_tokens) for the recompute reference
    (at j = cache_size the window is the whole prefix, where recomputation is dense attention)."""
    pool = list(range(cache_size + 1, n_tokens))
    if samples <= 0 or not pool:
        return []
    step = max(1, len(pool) // samples)
    return pool[::step][:samples]


def evaluate_stream(
    lm,
    ids: torch.Tensor,
    cache_size: int = 256,
    n_sink: int = 4,
    profile_positions: list[int] | None = None,
    recompute_samples: int = 64,
    text_source: str = "",
    progress=None,
    phase=None,
) -> StreamResult:
    """Run every method on the token ids (1, N) and collect per-position nll.

    progress(k): k more decode steps done, k whole (batched tokens count as fractions of a step,
    carried until they make one); phase(label): the method about to run (for the bar)."""
    from sinkhole.cache.sink_cache import SinkCache

    progress = whole_steps(progress) if progress else None

    model = lm.model
    n = ids.shape[1]
    if not 0 <= n_sink < cache_size - 1:
        raise SinkholeError(f"--sinks must be between 0 and cache size - 2 (got {n_sink} with cache {cache_size})")
    if n < 2:
        raise SinkholeError("stream at least 2 tokens")
    ids = ids.to(lm.device)
    methods: dict[str, StreamMethod] = {}

    def timed(name, slots, sinks, fn, offset=0):
        if phase:
            phase(METHOD_LABELS[name])
        t0 = time.perf_counter()
        vals = fn()
        methods[name] = StreamMethod(
            name, METHOD_LABELS[name], slots, sinks, _floats(vals.cpu(), n - 1, offset), time.perf_counter() - t0
        )

    dense_upto = min(n, lm.max_context or n)
    timed("dense", None, [], lambda: nll_dense(model, ids, dense_upto, progress=progress))
    timed("window", cache_size, [], lambda: nll_streaming(model, ids, SinkCache(0, cache_size, model=model), progress))
    sinks = list(range(n_sink))
    timed(
        "sinks",
        cache_size,
        sinks,
        lambda: nll_streaming(model, ids, SinkCache(n_sink, cache_size - n_sink, model=model), progress),
    )
    if profile_positions is not None:
        pins = sorted(set(profile_positions))
        if len(pins) >= cache_size - 1:
            raise SinkholeError(f"the profile pins {len(pins)} slots, too many for a cache of {cache_size}")
        if pins == sinks:  # same policy: reuse the run rather than stream again
            methods["profile"] = StreamMethod(
                "profile",
                METHOD_LABELS["profile"],
                cache_size,
                pins,
                list(methods["sinks"].nll),
                methods["sinks"].seconds,
            )
        else:
            cache = SinkCache(window=cache_size - len(pins), model=model, sink_positions=pins)
            timed("profile", cache_size, pins, lambda: nll_streaming(model, ids, cache, progress))
    targets = sample_targets(n, cache_size, recompute_samples)
    if phase:
        phase(METHOD_LABELS["recompute"])
    t0 = time.perf_counter()
    rec = nll_recompute(model, ids, cache_size, targets, progress=progress)
    rec_nll: list[float | None] = [None] * (n - 1)
    for j, v in zip(targets, rec.tolist()):
        rec_nll[j - 1] = round(v, 5)
    methods["recompute"] = StreamMethod(
        "recompute", METHOD_LABELS["recompute"], cache_size, [], rec_nll, time.perf_counter() - t0
    )
    return StreamResult(
        model=lm.name,
        text_source=text_source,
        n_tokens=n,
        cache_size=cache_size,
        n_sink=n_sink,
        sample_positions=targets,
        methods=methods,
        settings=StreamSettings(
            recompute_samples=recompute_samples,
            dense_upto=dense_upto,
            dtype=str(lm.dtype).replace("torch.", ""),
            device=str(lm.device),
        ),
        summary=summary_rows(methods, cache_size, targets),
    )


def progress_total(n: int, cache_size: int, n_streams: int, n_samples: int, dense_upto: int) -> int:
    """Work units `evaluate_stream` reports: decode steps, plus batched tokens at their relative cost
    (whole steps: what `whole_steps` passes on in all)."""
    return n_streams * (n - 1) + int((dense_upto + n_samples * cache_size) * BATCHED_TOKEN_COST)


def whole_steps(progress):
    """progress(k) for fractional k -> progress(whole steps): the fraction is carried to the next call,
    so a bar counts whole steps ("1205/1205", not "1205.0/1205.0")."""
    carry = 0.0

    def update(k: float) -> None:
        nonlocal carry
        carry += k
        whole = int(carry)
        if whole:
            carry -= whole
            progress(whole)

    return update
