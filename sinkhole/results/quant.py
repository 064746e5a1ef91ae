"""`sinkhole quant`'s typed results: the calibration statistics (`--stats-json`) and the fake-quantized
W8A8 validation (`--validate --json`).

JSON schema "sinkhole.quant-stats/1" (`QuantStats.to_dict()`): schema, model{name, architecture,
weights_id, n_layers}, source, n_sequences, n_tokens, skip_positions, outlier_token_ratio,
modules[{name, layer, kind, n_channels, input_group, absmax, median_channel_absmax,
top_channels[{channel, absmax, ratio}], share_ge_6, token_ratio_max, n_outlier_tokens,
outlier_positions{position: n}, outlier_tokens[{token_id, text, count}], examples[{sequence, position,
token_id, ratio}]}]. The statistics are defined in sinkhole.quant.stats, which computes them.

Validation (`QuantValidation.to_dict()`): results[{scheme, perplexity, delta_vs_float, beats_naive,
detail}], hints{threshold, alpha, skip, prefix}, n_heldout_tokens, n_heldout_sequences, model{...},
calibration{source, n_sequences, length}, alpha_basis. The schemes are defined in
sinkhole.quant.evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sinkhole.results.base import Result

STATS_SCHEMA = "sinkhole.quant-stats/1"


@dataclass
class QuantModel(Result):
    name: str
    architecture: str
    weights_id: str | None
    n_layers: int | None


@dataclass
class TopChannel(Result):
    channel: int
    absmax: float
    ratio: float  # absmax / the median channel's absmax


@dataclass
class OutlierToken(Result):
    token_id: int
    text: str | None  # None without a tokenizer
    count: int


@dataclass
class OutlierExample(Result):
    sequence: int
    position: int
    token_id: int
    ratio: float  # token max / median token max of its sequence


@dataclass
class ModuleStats(Result):
    """One Linear's input statistics (definitions in sinkhole.quant.stats)."""

    name: str
    layer: int | None
    kind: str
    n_channels: int
    input_group: str
    absmax: float
    median_channel_absmax: float
    top_channels: list[TopChannel]  # by absmax, largest first
    share_ge_6: float
    token_ratio_max: float
    n_outlier_tokens: int
    outlier_positions: dict[str, int] = field(metadata={"map": "{position: n}"})
    outlier_tokens: list[OutlierToken] = field(default_factory=list)
    examples: list[OutlierExample] = field(default_factory=list)

    @property
    def top_channel(self) -> TopChannel:
        """The channel of the largest absmax (the lowest index among equal ones, as argmax picks)."""
        return min(self.top_channels, key=lambda t: (-t.absmax, t.channel))


@dataclass
class QuantStats(Result):
    schema: str
    model: QuantModel
    source: str
    n_sequences: int
    n_tokens: int
    skip_positions: int
    outlier_token_ratio: float  # PrefixQuant's eta: an outlier token's max / its sequence's median
    modules: list[ModuleStats]

    def hot_modules(self) -> list[str]:
        """Modules whose largest token ratio exceeds `outlier_token_ratio` (they see outlier tokens)."""
        return [m.name for m in self.modules if m.token_ratio_max > self.outlier_token_ratio]


@dataclass
class SchemeResult(Result):
    scheme: str
    perplexity: float
    delta_vs_float: float
    beats_naive: bool | None  # None for the references (float, naive itself)
    detail: str


@dataclass
class ValidationHints(Result):
    """The hints each scheme was run with."""

    threshold: float
    alpha: float | None
    skip: list[str]
    prefix: list[int]  # token ids


@dataclass
class CalibrationInfo(Result):
    source: str
    n_sequences: int
    length: int  # tokens per sequence


@dataclass
class QuantValidation(Result):
    results: list[SchemeResult]
    hints: ValidationHints
    n_heldout_tokens: int
    n_heldout_sequences: int
    model: QuantModel
    calibration: CalibrationInfo
    alpha_basis: dict = field(default_factory=dict, metadata={"keys": "{alpha, calibration_perplexity?}"})
