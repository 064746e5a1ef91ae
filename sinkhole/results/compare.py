"""`sinkhole compare`'s typed result ("sinkhole.compare/1"): two analyze reports (`ReportComparison`) or
two eval runs (`EvalComparison`) side by side, each value a pair [A, B].

sinkhole.eval.comparison builds it from the two files; sinkhole.render.compare_text prints it and
sinkhole.render.compare_page draws it. Field order is the JSON's key order. Spike and sink tokens are
matched by position: `both` holds the tokens at a position in both reports (A's and B's values),
`only_a` / `only_b` the others. `heads.diff`, `largest_changes`, `started_sinking` and
`stopped_sinking` are written only when both models have the same layers x heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sinkhole.results.base import Result, opt

COMPARE_SCHEMA = "sinkhole.compare/1"


@dataclass
class SpikeValues(Result):
    """What is compared of a spike token (`SpikeToken`'s fields, sinkhole.results.report)."""

    text: str
    score: float
    layer: int
    channel: int
    channels: list[int]


@dataclass
class SpikeAt(Result):
    """A spike token found in one report only: its position and `SpikeValues`."""

    position: int
    text: str
    score: float
    layer: int
    channel: int
    channels: list[int]


@dataclass
class SpikePair(Result):
    position: int
    a: SpikeValues
    b: SpikeValues


@dataclass
class SinkValues(Result):
    """What is compared of a sink token (`SinkToken`'s fields, sinkhole.results.report)."""

    text: str
    attn_mass: float
    sink_rate: float


@dataclass
class SinkAt(Result):
    """A sink token (the top sink, or one found in one report only): its position and `SinkValues`."""

    position: int
    text: str
    attn_mass: float
    sink_rate: float


@dataclass
class SinkPair(Result):
    position: int
    a: SinkValues
    b: SinkValues


@dataclass
class SpikeChanges(Result):
    n: list[int]  # spike tokens in A, B
    top_score: list[float]  # max over tokens of S[t]
    both: list[SpikePair]
    only_a: list[SpikeAt]
    only_b: list[SpikeAt]


@dataclass
class SinkChanges(Result):
    n: list[int]
    top: list[SinkAt]  # A's and B's top sink
    both: list[SinkPair]
    only_a: list[SinkAt]
    only_b: list[SinkAt]


@dataclass
class ChannelChanges(Result):
    a: list[int]  # spike channels (union over spike tokens), in core's one channel order
    b: list[int]
    both: list[int]
    only_a: list[int]
    only_b: list[int]


@dataclass
class HeadChange(Result):
    layer: int
    head: int
    a: float  # alpha on A's top sink
    b: float


@dataclass
class HeadChanges(Result):
    n_sink_heads: list[int | None]  # heads whose alpha on the top sink exceeds epsilon (None: no heads section)
    n_heads: list[int | None]
    same_shape: bool  # same layers x heads: heads are matched by (layer, head)
    diff: list[list[float]] | None = opt("same_shape", shape="[L][H]")  # B - A of alpha on the top sink
    largest_changes: list[HeadChange] | None = opt("same_shape")
    started_sinking: list[list[int]] | None = opt("same_shape")  # [layer, head]
    stopped_sinking: list[list[int]] | None = opt("same_shape")


@dataclass
class CompareResult(Result):
    """What both kinds of comparison hold: the two files and their models."""

    schema: str = field(default=COMPARE_SCHEMA, kw_only=True)
    kind: str = field(default="", kw_only=True)  # "report" or "eval"
    files: list[str | None]
    models: list[str | None]


@dataclass
class ReportComparison(CompareResult):
    """Two analyze reports: tokens, spikes, sinks, channels, heads, Jaccard and KV share."""

    kind: str = field(default="report", kw_only=True)
    weights: list[str | None]
    n_tokens: list[int]
    same_prompt: bool  # same prompt text and token ids
    spikes: SpikeChanges
    sinks: SinkChanges
    channels: ChannelChanges
    jaccard: list[float | None]
    kv: list[float]  # attention on the sink slots
    heads: HeadChanges


@dataclass
class EvalChannels(Result):
    a: list[int]  # each run's most common spike channel set
    b: list[int]
    share: list[float | None]  # share of prompts with spikes that have it


@dataclass
class EvalComparison(CompareResult):
    """Two eval runs: the means of their metrics, overall and per shared category."""

    kind: str = field(default="eval", kw_only=True)
    n_prompts: list[int]
    metrics: dict[str, list[float | None]] = field(metadata={"map": "{metric: [a, b]}"})  # means
    channels: EvalChannels
    top_sink_positions: list[dict[str, float]]
    length_vs_sink_mass_r: list[float | None]
    per_category: dict[str, dict[str, list[float | None]]] = field(
        metadata={"map": "{category: {spike_score, sink_mass}}"}
    )
