"""One row per prompt of `sinkhole eval` (`EvalRow`), typed, as `sinkhole.eval.runner.prompt_row` builds it.

Design: the row is a dataclass with typed entries for the records it holds (`EvalSpike`, `EvalSink`),
reusing the report's `_Row` mixin, so `row.sink_mass`, `row["sink_mass"]` and `row.get("jaccard")`
all work and code (or tests) that pass plain dicts of the same keys keeps working. Dicts exist only
at the edge: `to_dict()` for results.jsonl (`ResultsStore.append`), `EvalRow.from_dict` when a run
is resumed (`ResultsStore.read_rows`); rows.csv (sinkhole.eval.export) and summary.json
(sinkhole.eval.aggregate) are computed from the typed rows. Field order is the JSON's key order, so
results.jsonl is byte for byte what the dict rows wrote.

Row keys (results.jsonl), generated from the dataclasses by `row_doc()` (tests/test_schema.py
checks this text, docs/eval.md and a written row against it); every key is always present, [T]: one
per token:
    index, category, n_tokens, n_spikes, spike_score, spike_channels, spikes[{position, text, score,
    top_value, layer, channel, channels, step_up_layers, step_down_layers, channel_values}],
    n_sinks, sink_mass, sink_rate, top_sink{position, text, attn_mass, sink_rate}, sinks[{position,
    text, attn_mass, sink_rate}], sink_heads, jaccard, sink_attention_share, tokens[T]
`jaccard` is null for a prompt with neither a spike nor a sink token.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

from sinkhole.results.report import _keys_of, _Row


@dataclass
class EvalSpike(_Row):
    """A spike token of the prompt: `SpikeToken`'s fields (sinkhole.results.report) but max_norm, plus
    the signed values of its spike channels at its top layer."""

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


@dataclass
class EvalSink(_Row):
    """A sink token (or the top sink): `SinkToken`'s fields but n_heads."""

    position: int
    text: str
    attn_mass: float  # mean over (layer, head) of alpha
    sink_rate: float  # share of (layer, head) with alpha > epsilon


@dataclass
class EvalRow(_Row):
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


def row_keys() -> str:
    """'index, category, ..., spikes[{position, ...}], ...': the row's keys in the report schema's notation."""
    return _keys_of(EvalRow)[1:-1]


def row_doc(width: int = 100) -> str:
    """The key listing of this module's docstring (whitespace aside); tests keep the two equal."""
    return textwrap.fill(row_keys(), width, initial_indent="    ", subsequent_indent="    ")
