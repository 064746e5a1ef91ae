"""`sinkhole stream`'s typed result: per-position nll of every cache method over one long text.

JSON schema "sinkhole.stream/1" (`StreamResult.to_dict()`; `schema_text(StreamResult)` lists it):
    model, text_source, n_tokens, cache_size, n_sink, sample_positions, methods{method: {name, label,
    slots, sink_positions, nll[N-1], seconds}}, settings{recompute_samples, dense_upto, dtype, device},
    schema, summary[{method, label, slots, scored, ppl, ppl_past_cache, ppl_sample}]

`nll[j-1]` scores token j (null where the method did not score it); the methods and perplexities
are defined in sinkhole.cache.stream_ppl, which computes the summary rows (ppl_* null when the
method scored no position there). No speed column: dense is scored in chunked forwards, the caches
one token at a time and the recompute reference in batched windows, so their seconds (kept per
method) are not comparable; benchmarks/cache.py measures decode speed like with like.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sinkhole.results.base import Result

SCHEMA = "sinkhole.stream/1"


@dataclass
class StreamMethod(Result):
    """One method's per-position nll. `nll[j-1]` scores token j; None where the method did not score."""

    name: str
    label: str
    slots: int | None  # attention budget in keys per global layer (None: unbounded)
    sink_positions: list[int]
    nll: list[float | None] = field(metadata={"shape": "[N-1]"})
    seconds: float

    def scored(self) -> int:
        return sum(v is not None for v in self.nll)


@dataclass
class StreamSummaryRow(Result):
    """One method's perplexities: over every position it scored, past the cache (predictions made after
    the first eviction), and at the recompute sample (the only like-for-like column with the reference)."""

    method: str
    label: str
    slots: int | None
    scored: int
    ppl: float | None
    ppl_past_cache: float | None
    ppl_sample: float | None


@dataclass
class StreamSettings(Result):
    recompute_samples: int
    dense_upto: int  # dense attention scores up to here (the model's trained context)
    dtype: str
    device: str


@dataclass
class StreamResult(Result):
    model: str
    text_source: str
    n_tokens: int
    cache_size: int
    n_sink: int
    sample_positions: list[int]
    methods: dict[str, StreamMethod] = field(metadata={"map": "{method: {...}}"})
    settings: StreamSettings
    schema: str = SCHEMA
    summary: list[StreamSummaryRow] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> StreamResult:
        """The methods' map is rebuilt here (the base rebuilds rows and lists of rows)."""
        r = super().from_dict({**d, "methods": None})
        r.methods = {k: StreamMethod.from_dict(m) for k, m in d["methods"].items()}
        return r
