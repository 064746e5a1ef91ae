"""`sinkhole stream --recall`'s typed result: copy recall of every cache method at one KV budget.

JSON schema "sinkhole.recall/1" (`RecallResult.to_dict()`; `schema_text(RecallResult)` lists it):
    model, n_tokens, budget, window, n_sink, uniform_cache, dense_bytes, spans[stream][span][p1, p2,
    length], rows[{method, label, recall, recall_first, ppl_text, kv_slots, kv_share, kv_bytes,
    bytes_share, seconds, detail{retrieval_heads?, kv_heads?, retrieval?, plan?, seeds?[{seed, recall,
    recall_first, ppl_text, nbytes, slots, seconds, retrieval}], recall_range?, ppl_range?}}],
    settings{span, n_spans, seeds, chunk, rank_by, local_sinks, random_seeds, text, dtype, device}, schema

The methods and numbers are defined in sinkhole.cache.recall, which computes them. A row's detail is
empty for dense; the head-aware caches give their full (retrieval) heads, the random-heads control
its means over the seeds with each seed's own numbers (`seeds`) and their extremes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sinkhole.results.base import Result, opt

SCHEMA = "sinkhole.recall/1"


@dataclass
class RecallSeed(Result):
    """One random-heads draw of the control: its own numbers and the heads it kept whole."""

    seed: int
    recall: float
    recall_first: float
    ppl_text: float
    nbytes: int
    slots: int
    seconds: float
    retrieval: list[list[int]] = field(metadata={"shape": "[L][heads]"})


@dataclass
class RecallDetail(Result):
    """What a head-aware cache kept (empty for the caches that keep every head alike)."""

    retrieval_heads: int | None = opt("head-aware caches: full heads in all layers")
    kv_heads: int | None = opt("head-aware caches: KV heads in all layers")
    retrieval: list[list[int]] | None = opt("head-aware (profile): the full heads per layer", shape="[L][heads]")
    plan: dict | None = opt("head-aware caches: the memory plan (`MemoryPlan.to_dict()`)")
    seeds: list[RecallSeed] | None = opt("random heads: every seed's numbers")
    recall_range: list[float] | None = opt("random heads: [min, max] over the seeds")
    ppl_range: list[float] | None = opt("random heads: [min, max] over the seeds")

    @classmethod
    def from_dict(cls, d: dict) -> RecallDetail:
        """The seeds' rows are rebuilt here: the base rebuilds `list[Row]`, not `list[Row] | None`."""
        r = super().from_dict(d)
        if r.seeds is not None:
            r.seeds = [RecallSeed.from_dict(s) for s in r.seeds]
        return r

    @property
    def full_heads(self) -> str:
        """'retrieval/kv heads', or 'all' when the cache treats every head alike."""
        return "all" if self.kv_heads is None else f"{self.retrieval_heads}/{self.kv_heads}"


@dataclass
class RecallRow(Result):
    method: str
    label: str
    recall: float
    recall_first: float
    ppl_text: float
    kv_slots: int
    kv_share: float
    kv_bytes: int
    bytes_share: float
    seconds: float
    detail: RecallDetail = field(default_factory=RecallDetail)


@dataclass
class RecallSettings(Result):
    span: int
    n_spans: int
    seeds: list[int]
    chunk: int
    rank_by: str
    local_sinks: int
    random_seeds: list[int]
    text: str
    dtype: str
    device: str


@dataclass
class RecallResult(Result):
    model: str
    n_tokens: int
    budget: float
    window: int
    n_sink: int
    uniform_cache: int
    dense_bytes: int
    spans: list[list[list[int]]] = field(metadata={"shape": "[stream][span][p1, p2, length]"})
    rows: list[RecallRow]
    settings: RecallSettings
    schema: str = SCHEMA

    @property
    def distance(self) -> int:
        """Tokens between a span's first and second occurrence."""
        first = self.spans[0][0]
        return first[1] - first[0]
