"""`sinkhole eval`'s typed results: one row per prompt (`EvalRow`, results.jsonl) and the run's summary
(`EvalSummary`, summary.json).

sinkhole.eval.runner.prompt_row builds the rows from each prompt's `analyze` report;
sinkhole.eval.aggregate.summarize builds the summary from the rows; sinkhole.render.eval_* print and
draw them, `sinkhole compare` reads summary.json back (`EvalSummary.from_dict`). Field order is the
JSON's key order, so results.jsonl and summary.json are byte for byte what the dict rows wrote.

A row's spike and sink entries are the report's `SpikeToken` / `SinkToken` with fewer keys, and a
spike with its channels' values: `EvalSpike.of` and `EvalSink.of` are the one place that says which
(the report's types cannot be reused as they are: results.jsonl has no max_norm or n_heads).

Row keys (results.jsonl), generated from the dataclasses by `row_doc()` (tests/test_schema.py
checks this text, docs/eval.md and a written row against it); every key is always present, [T]: one
per token:
    index, category, n_tokens, n_spikes, spike_score, spike_channels, spikes[{position, text, score,
    top_value, layer, channel, channels, step_up_layers, step_down_layers, channel_values}],
    n_sinks, sink_mass, sink_rate, top_sink{position, text, attn_mass, sink_rate}, sinks[{position,
    text, attn_mass, sink_rate}], sink_heads, jaccard, sink_attention_share, tokens[T]
`jaccard` is null for a prompt with neither a spike nor a sink token.

Summary keys (summary.json, "sinkhole.eval-summary/1"): schema, run (run.json: the model, suite
and settings), n_prompts, metrics{metric: {mean, std, min, max, n}}, per_category{category:
{n_prompts, metrics}}, spike_channels{prompts_with_spikes, most_common_set, same_set_share,
distinct_sets, channels[{channel, frequency, mean_value}]}, top_sink_positions{position: share},
length_vs_sink_mass_r.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field, fields

from sinkhole.results.base import Result, schema_text
from sinkhole.results.report import SinkToken, SpikeToken

SUMMARY_SCHEMA = "sinkhole.eval-summary/1"
METRICS = {  # key in a row -> label in the table (the summary's metrics, in this order)
    "n_spikes": "spike tokens / prompt",
    "spike_score": "spike score (x median)",
    "sink_mass": "sink attention mass",
    "sink_rate": "sink rate (share of heads)",
    "n_sinks": "sink tokens / prompt",
    "sink_attention_share": "attention on sink slots",
    "jaccard": "Jaccard(spikes, sinks)",
    "n_tokens": "sequence length (tokens)",
}
PERCENT = {"sink_mass", "sink_rate", "sink_attention_share"}  # metrics that are shares


def _same_fields(cls, token) -> dict:
    """The fields of `cls` that `token` has, by name: what a row entry keeps of the report's token."""
    return {f.name: getattr(token, f.name) for f in fields(cls) if hasattr(token, f.name)}


@dataclass
class EvalSpike(Result):
    """A spike token of the prompt: `SpikeToken`'s fields but max_norm, plus the signed values of its
    spike channels at its top layer."""

    position: int
    text: str
    score: float  # S[t] = peak residual norm / median over tokens of the peak norm
    top_value: float  # signed h_l[t, c] of largest magnitude over layers and channels
    layer: int  # layer of top_value
    channel: int  # channel of top_value
    channels: list[int]  # spike channels, by |h|
    step_up_layers: list[int]
    step_down_layers: list[int]
    channel_values: list[float]  # h at `layer` for each of `channels` (Detail.spike_channel_values)

    @classmethod
    def of(cls, token: SpikeToken, channel_values: list[float]) -> EvalSpike:
        return cls(**_same_fields(cls, token), channel_values=list(channel_values))


@dataclass
class EvalSink(Result):
    """A sink token (or the top sink): `SinkToken`'s fields but n_heads."""

    position: int
    text: str
    attn_mass: float  # mean over (layer, head) of alpha
    sink_rate: float  # share of (layer, head) with alpha > epsilon

    @classmethod
    def of(cls, token: SinkToken) -> EvalSink:
        return cls(**_same_fields(cls, token))


@dataclass
class EvalRow(Result):
    """One prompt's numbers, all from its `analyze` report (sinkhole.eval.runner.prompt_row picks them)."""

    index: int  # the prompt's index in the suite
    category: str
    n_tokens: int  # chat template included
    n_spikes: int
    spike_score: float  # max over tokens of S[t]
    spike_channels: list[int]  # union of the spike tokens' channels, in core's one channel order
    spikes: list[EvalSpike]  # S[t] > threshold, by position
    n_sinks: int
    sink_mass: float  # the top sink's attention mass
    sink_rate: float  # the top sink's sink rate
    top_sink: EvalSink  # the token of largest attention mass (a sink token or not)
    sinks: list[EvalSink]  # sink rate >= min_sink_rate, by attention mass
    sink_heads: list[list[int]]  # [layer, head] pairs whose alpha on the top sink exceeds epsilon
    jaccard: float | None  # Jaccard of the spike and sink position sets; None if both are empty
    sink_attention_share: float  # share of all attention probability on the sink tokens' KV slots
    tokens: list[str] = field(metadata={"shape": "[T]"})  # token texts (profiles look for sinking texts)


def as_rows(rows: list[EvalRow | dict]) -> list[EvalRow]:
    """Rows typed: dicts of the row's keys (results.jsonl lines, rows from other tools) read back."""
    return [r if isinstance(r, EvalRow) else EvalRow.from_dict(r) for r in rows]


def row_keys() -> str:
    """'index, category, ..., spikes[{position, ...}], ...': the row's keys in the report schema's notation."""
    return schema_text(EvalRow)[1:-1]


def row_doc(width: int = 100) -> str:
    """The row key listing of this module's docstring (whitespace aside); tests keep the two equal."""
    return textwrap.fill(row_keys(), width, initial_indent="    ", subsequent_indent="    ")


# ---------- the summary (summary.json) ----------


@dataclass
class MetricStats(Result):
    """Statistics of one metric over prompts (those with a value: `jaccard` can be null)."""

    mean: float | None
    std: float | None  # population std (ddof=0)
    min: float | None
    max: float | None
    n: int  # prompts with a value


@dataclass
class ChannelStat(Result):
    channel: int
    frequency: float  # share of the prompts with spikes whose channel set holds it
    mean_value: float  # mean signed value at the spike tokens' top layers


@dataclass
class ChannelSummary(Result):
    """The spike channels over the prompts that have at least one spike token."""

    prompts_with_spikes: int
    most_common_set: list[int]
    same_set_share: float | None  # share of those prompts whose channel set is the most common one
    distinct_sets: int
    channels: list[ChannelStat]  # by frequency


def _metrics_of(d: dict) -> dict[str, MetricStats]:
    return {k: MetricStats.from_dict(v) for k, v in d.items()}


@dataclass
class CategorySummary(Result):
    n_prompts: int
    metrics: dict[str, MetricStats] = field(metadata={"map": "{metric: stats}"})

    @classmethod
    def from_dict(cls, d: dict) -> CategorySummary:
        return cls(n_prompts=d["n_prompts"], metrics=_metrics_of(d["metrics"]))


@dataclass
class EvalSummary(Result):
    """summary.json: statistics over the prompts of a run (sinkhole.eval.aggregate.summarize)."""

    schema: str = field(default=SUMMARY_SCHEMA, kw_only=True)  # the file's first key
    run: dict  # run.json: {schema, model{name, ...}, suite{source, sha256, count}, settings{...}}
    n_prompts: int
    metrics: dict[str, MetricStats] = field(metadata={"map": "{metric: stats}"})  # keys: METRICS
    per_category: dict[str, CategorySummary] = field(metadata={"map": "{category: summary}"})
    spike_channels: ChannelSummary
    top_sink_positions: dict[str, float] = field(metadata={"map": "{position: share}"})  # over prompts
    length_vs_sink_mass_r: float | None  # Pearson r over prompts; None below 3 prompts or no spread

    @classmethod
    def from_dict(cls, d: dict) -> EvalSummary:
        return cls(
            run=d.get("run") or {},
            n_prompts=d["n_prompts"],
            metrics=_metrics_of(d["metrics"]),
            per_category={c: CategorySummary.from_dict(v) for c, v in d.get("per_category", {}).items()},
            spike_channels=ChannelSummary.from_dict(d["spike_channels"]),
            top_sink_positions=d["top_sink_positions"],
            length_vs_sink_mass_r=d["length_vs_sink_mass_r"],
            schema=d.get("schema", SUMMARY_SCHEMA),
        )

    @property
    def model_name(self) -> str | None:
        return self.run.get("model", {}).get("name")

    @property
    def suite_source(self) -> str | None:
        return self.run.get("suite", {}).get("source")

    @property
    def chat(self) -> bool | None:
        return self.run.get("settings", {}).get("chat")
