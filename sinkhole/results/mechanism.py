"""`sinkhole mechanism`'s result, typed: one dataclass per section of the JSON `mechanism` key.

The pure analyses (sinkhole.analysis.mechanism) return these sections, `run_mechanism`
(sinkhole.experiments.mechanism_study) assembles them into a `MechanismResult`, and the renderers
(render/mechanism_text.py, render/html_mechanism.py) read their attributes. Dicts exist only at the
edge: `to_dict()` for the JSON file and the page's "all numbers" tree, `from_dict` for a file read
back. Sections leave out their optional fields (`key?` below) when None.

JSON: the mechanism report is prompt 0's report ("sinkhole.report/1") plus one key `mechanism`,
generated from the dataclasses by `mechanism_doc()` (tests/test_schema.py checks this text,
docs/mechanism.md and a real file against it). Notation: `{...}` an object, `[{...}]` a list of
them, `[C]` one per spike channel, `[L]` one per layer, `[L'][G]` per attention layer and KV head,
`[L'][H]` per attention layer and query head, `[2L]` per block, `[2L][3]` per block its top 3, `[8]`
eight;
`{block: n}` an object keyed by block names ("L11.ffn"); `key?` present only when computed (see
below); `A | {applicable, reason}`: the second form (`applicable` false) where the analysis does not
apply to the model.
    mechanism{config{n_prompts, chat, threshold, epsilon, min_sink_rate, step_fraction},
    targets{fallback, n, step_up_layer, spike_channels[C], step_up_mean_values[C], tokens[{prompt,
    position, token_id, text}]}, summary{spike_score, top_abs_over_median, top_sink_rate,
    top_sink_attn_mass, n_spike_tokens, n_sink_tokens, sink_attention_share, step_up_layer},
    lifecycle{rule, n_spike_tokens, rise_counts{block: n}, fall_counts{block: n}, rise_block_mode,
    plateau_blocks_mean, tokens[{prompt, position, token_id, text, score, core_step_up_layers,
    core_step_down_layers, step_up_blocks, step_down_blocks, rise_block, rise, fall_block, fall,
    plateau_blocks, plateau_mean_norm, peak_norm, main_channel, step_down_cancels{block: bool},
    rise_main_channel_value, trace?{blocks[2L], resid_norm[2L], resid_top3_channels[2L][3],
    resid_top3_values[2L][3], block_top3_channels[2L][3], block_top3_values[2L][3]}}]},
    channels{channels[C], main, plateau_value[C], value_by_layer[C][L], ratio_to_main[C],
    ratio_cv_across_layers[C], ratio_cv_across_tokens[C]}, activation{activation, spike{cos, norm_ratio,
    n}, other{cos, norm_ratio, n}} | {applicable, reason}, amplifier{fro_norm_median, n_channels,
    fro_norm_top_channels[8], fro_norm_top_values[8], channels[{channel, fro_norm, fro_over_median,
    fro_rank, top_eigenvalues[5], dominance, alignment_spike, alignment_other, quadratic_over_actual}],
    s_star_abs_cos[C][C], post_block_gain[C]} | {applicable, reason},
    normalization{before{spike_sparsity, other_sparsity, cos_across_prompts, n_pairs_prompts,
    cos_across_tokens, n_pairs_tokens, other_mean_cos}, after{spike_sparsity, other_sparsity,
    cos_across_prompts, n_pairs_prompts, cos_across_tokens, n_pairs_tokens, other_mean_cos}} |
    {applicable, reason}, sink_keys{n_sink_keys, n_other_keys, head_dim,
    per_layer_kv_head{sink_pr[L'][G], sink_r90[L'][G], other_pr[L'][G], other_r90[L'][G]},
    query_alignment{energy_share[L'][H], random_share[L'][H], cos_mean_sink_key[L'][H]},
    sink_heads[[layer, head]], n_sink_heads, n_heads, mean_sink_pr, mean_other_pr, mean_sink_r90,
    mean_other_r90, energy_share_sink_heads, energy_share_other_heads, cos_sink_heads, cos_other_heads,
    layers?[L']}, interventions?{n_tokens, layer, spike_positions, channels[C], mean_values[C],
    sink_positions, perplexity{none, zero, mean, random_zero, sink_masked}, ratio_to_none{none, zero,
    mean, random_zero, sink_masked}, spike_fallback, text}, vocab_sweep?{n_tokens, threshold,
    reference_norm, n_spike, spike_share, score_percentiles{percentile: score}, exceptions_are,
    n_exceptions, exceptions[{id, text, score}], vocab_median_norm, n_over_threshold_vs_vocab_median,
    vocab_size, sampled, seconds, tokens_per_second, dtype}}
    Present only when computed: trace: the first MechanismConfig.trace_tokens targets; layers: models
    with non-attention layers (the attention layers, the rows of the per-layer lists; sink_heads then
    name real layers); interventions: unless --no-interventions; vocab_sweep: with --vocab-sweep.
    Not applicable ({applicable: false, reason}): activation, amplifier: the FFN has no separate gate /
    up / down projections; normalization: no norm feeds the attention.
The definitions of every number are in docs/mechanism.md and the analyses' docstrings; values not
defined for a model or a token set (no pair, no plateau) are null.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field, fields

from sinkhole.results.base import OPTIONAL, NotApplicable, Result, jsonable, opt, schema_text, shape, to_dict
from sinkhole.results.report import Report

# ---------- config, targets, summary (sinkhole.experiments.mechanism_study) ----------


@dataclass
class MechanismSettings(Result):
    """The run's settings (the JSON's `config`)."""

    n_prompts: int
    chat: bool
    threshold: float
    epsilon: float
    min_sink_rate: float
    step_fraction: float


@dataclass
class TargetToken(Result):
    prompt: int  # row of the prompt set
    position: int
    token_id: int
    text: str


@dataclass
class Targets(Result):
    fallback: bool  # no spike token anywhere: each prompt's top-scoring token instead
    n: int
    step_up_layer: int
    spike_channels: list[int] = shape("[C]")  # the main channel first
    step_up_mean_values: list[float] = shape("[C]")  # mean h_s at the channels over the targets
    tokens: list[TargetToken]


@dataclass
class MechanismSummary(Result):
    """Means over the prompts (counts too, so floats)."""

    spike_score: float  # prompt_spike_score (max_t S[t])
    top_abs_over_median: float
    top_sink_rate: float
    top_sink_attn_mass: float
    n_spike_tokens: float
    n_sink_tokens: float
    sink_attention_share: float
    step_up_layer: int


# ---------- lifecycle (sinkhole.analysis.mechanism.lifecycle) ----------


@dataclass
class BlockTrace(Result):
    blocks: list[str] = shape("[2L]")  # "L0.attn", "L0.ffn", ...
    resid_norm: list[float] = shape("[2L]")
    resid_top3_channels: list[list[int]] = shape("[2L][3]")
    resid_top3_values: list[list[float]] = shape("[2L][3]")
    block_top3_channels: list[list[int]] = shape("[2L][3]")
    block_top3_values: list[list[float]] = shape("[2L][3]")


@dataclass
class BlockLifecycle(Result):
    """One token's lifecycle over the 2L blocks (`lifecycle.lifecycle`)."""

    step_up_blocks: list[int]
    step_down_blocks: list[int]
    rise_block: int | None
    rise: str | None  # block name of rise_block
    fall_block: int | None
    fall: str | None
    plateau_blocks: int
    plateau_mean_norm: float | None
    peak_norm: float
    main_channel: int
    step_down_cancels: dict[str, bool] = field(metadata={"map": "{block: bool}"})
    rise_main_channel_value: float | None
    trace: BlockTrace | None = opt("the first MechanismConfig.trace_tokens targets")


@dataclass
class _LifecycleHead(TargetToken):
    score: float
    core_step_up_layers: list[int]
    core_step_down_layers: list[int]


@dataclass
class LifecycleToken(BlockLifecycle, _LifecycleHead):
    """A target's BlockLifecycle after who it is: prompt, position, token_id, text, score, the core's step
    layers (dataclass fields follow the reversed MRO: _LifecycleHead's first, then BlockLifecycle's)."""


@dataclass
class Lifecycle(Result):
    rule: str
    n_spike_tokens: int
    rise_counts: dict[str, int] = field(metadata={"map": "{block: n}"})  # most common first
    fall_counts: dict[str, int] = field(metadata={"map": "{block: n}"})
    rise_block_mode: int | None
    plateau_blocks_mean: float | None
    tokens: list[LifecycleToken]


# ---------- channels (sinkhole.analysis.mechanism.channels) ----------


@dataclass
class ChannelProfile(Result):
    channels: list[int] = shape("[C]")
    main: int | None
    plateau_value: list[float | None] = shape("[C]")
    value_by_layer: list[list[float | None]] = shape("[C][L]")  # None off the targets' plateaus
    ratio_to_main: list[float | None] = shape("[C]")
    ratio_cv_across_layers: list[float | None] = shape("[C]")
    ratio_cv_across_tokens: list[float | None] = shape("[C]")


# ---------- activation and amplifier (sinkhole.analysis.mechanism.amplifier) ----------


@dataclass
class RegimeStats(Result):
    cos: float | None  # mean cos(act input, act output)
    norm_ratio: float | None  # mean ||act output|| / ||act input||
    n: int


@dataclass
class ActivationRegime(Result):
    activation: str  # the activation module's class name
    spike: RegimeStats
    other: RegimeStats


@dataclass
class AmplifierChannel(Result):
    channel: int
    fro_norm: float  # ||U_k||_F
    fro_over_median: float
    fro_rank: int  # 1 = the largest of all n_channels
    top_eigenvalues: list[float] = shape("[5]")  # of S_k, largest |.| first
    dominance: float | None  # |lambda1| / |lambda2|
    alignment_spike: float | None  # mean |cos(x, s*)| over the targets
    alignment_other: float | None
    quadratic_over_actual: float | None


@dataclass
class Amplifier(Result):
    fro_norm_median: float
    n_channels: int
    fro_norm_top_channels: list[int] = shape("[8]")
    fro_norm_top_values: list[float] = shape("[8]")
    channels: list[AmplifierChannel]  # the spike channels
    s_star_abs_cos: list[list[float]] = shape("[C][C]")
    post_block_gain: list[float | None] | None = shape("[C]", default=None)  # set by run_mechanism


# ---------- normalization (sinkhole.analysis.mechanism.normalization) ----------


@dataclass
class NormStats(Result):
    spike_sparsity: float | None
    other_sparsity: float | None
    cos_across_prompts: float | None
    n_pairs_prompts: int
    cos_across_tokens: float | None
    n_pairs_tokens: int
    other_mean_cos: float | None


@dataclass
class Normalization(Result):
    before: NormStats  # the norm entering the step-up layer
    after: NormStats  # the norm entering the next layer


# ---------- sink keys (sinkhole.analysis.mechanism.sink_keys) ----------


@dataclass
class KVHeadDims(Result):
    sink_pr: list[list[float]] = shape("[L'][G]")
    sink_r90: list[list[int]] = shape("[L'][G]")
    other_pr: list[list[float]] = shape("[L'][G]")
    other_r90: list[list[int]] = shape("[L'][G]")


@dataclass
class QueryAlignment(Result):
    energy_share: list[list[float]] = shape("[L'][H]")
    random_share: list[list[float]] = shape("[L'][H]")
    cos_mean_sink_key: list[list[float]] = shape("[L'][H]")


@dataclass
class SinkKeys(Result):
    n_sink_keys: int
    n_other_keys: int
    head_dim: int
    per_layer_kv_head: KVHeadDims
    query_alignment: QueryAlignment
    sink_heads: list[list[int]] = shape("[[layer, head]]")
    n_sink_heads: int
    n_heads: int
    mean_sink_pr: float | None
    mean_other_pr: float | None
    mean_sink_r90: float | None
    mean_other_r90: float | None
    energy_share_sink_heads: float | None
    energy_share_other_heads: float | None
    cos_sink_heads: float | None
    cos_other_heads: float | None
    layers: list[int] | None = opt(
        "models with non-attention layers (the attention layers, the rows of the per-layer lists; sink_heads "
        "then name real layers)",
        shape="[L']",
    )


# ---------- interventions (sinkhole.experiments.interventions) ----------


@dataclass
class PerVariant(Result):
    """One number per intervention variant (None: not applicable); `items()` in this order."""

    none: float | None
    zero: float | None
    mean: float | None
    random_zero: float | None
    sink_masked: float | None

    def items(self) -> list[tuple[str, float | None]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


@dataclass
class Interventions(Result):
    n_tokens: int
    layer: int
    spike_positions: list[int]
    channels: list[int] = shape("[C]")
    mean_values: list[float] = shape("[C]")
    sink_positions: list[int]
    perplexity: PerVariant
    ratio_to_none: PerVariant
    spike_fallback: bool | None = None  # set by run_interventions
    text: str | None = None  # set by run_interventions


# ---------- vocabulary sweep (sinkhole.analysis.mechanism.vocab, experiments/vocab_sweep) ----------


@dataclass
class VocabException(Result):
    id: int
    text: str
    score: float


@dataclass
class VocabSweep(Result):
    n_tokens: int
    threshold: float
    reference_norm: float
    n_spike: int
    spike_share: float
    score_percentiles: dict[str, float] = field(metadata={"map": "{percentile: score}"})  # "0", "1", ..., "100"
    exceptions_are: str
    n_exceptions: int
    exceptions: list[VocabException]
    vocab_median_norm: float
    n_over_threshold_vs_vocab_median: int
    # the run's own numbers, set by sinkhole.experiments.vocab_sweep.vocab_sweep
    vocab_size: int | None = None
    sampled: bool | None = None
    seconds: float | None = None
    tokens_per_second: float | None = None
    dtype: str | None = None


# ---------- the result ----------

NO_GATED_FFN = "the FFN has no separate gate / up / down projections"


@dataclass
class Mechanism(Result):
    """The JSON `mechanism` section: the sections in the order they are written."""

    config: MechanismSettings
    targets: Targets
    summary: MechanismSummary
    lifecycle: Lifecycle
    channels: ChannelProfile
    activation: ActivationRegime | NotApplicable = field(metadata={"not_applicable": NO_GATED_FFN})
    amplifier: Amplifier | NotApplicable = field(metadata={"not_applicable": NO_GATED_FFN})
    normalization: Normalization | NotApplicable = field(metadata={"not_applicable": "no norm feeds the attention"})
    sink_keys: SinkKeys
    interventions: Interventions | None = opt("unless --no-interventions")
    vocab_sweep: VocabSweep | None = opt("with --vocab-sweep")

    def sections(self) -> dict:
        """The JSON `mechanism` section (strict-JSON ready): the Mechanism fields, never `example`."""
        return jsonable(to_dict(self, Mechanism))


@dataclass
class MechanismResult(Mechanism):
    """`sinkhole mechanism`: the mechanism sections over a prompt set, and its example prompt's report.

    The JSON file is the example prompt's (prompt 0's) report at the top level plus one `mechanism` key
    (`sections()`: the Mechanism fields), so readers of `mechanism.json` and the HTML page see the layout
    they always saw. `example` is the typed report whose tokens and heads the page draws beside them.
    """

    example: Report = field(kw_only=True)  # prompt 0's report

    @property
    def model(self) -> dict:
        return self.example.model

    def to_dict(self) -> dict:
        d = self.example.to_dict()
        d["mechanism"] = self.sections()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MechanismResult:
        """A mechanism report read back from its JSON (its example report has no `detail`)."""
        m = Mechanism.from_dict(d["mechanism"])
        example = Report.from_dict({k: v for k, v in d.items() if k != "mechanism"})
        return cls(**{f.name: getattr(m, f.name) for f in fields(Mechanism)}, example=example)


# ---------- the schema text, generated from the dataclasses ----------


def key_paths() -> dict[str, str]:
    """Every documented key path under `mechanism` ('lifecycle.tokens[].rise', ...) and what it is:
    'key' (always written), 'optional key' (only when computed, or in the not-applicable form), 'map'
    (an object with free keys; 'optional map')."""
    paths: dict[str, str] = {}
    schema_text(Mechanism, paths)
    return paths


def mechanism_doc(width: int = 104) -> str:
    """The key listing of this module's docstring and of docs/mechanism.md (whitespace aside)."""
    when = []
    for cls in (BlockLifecycle, SinkKeys, Mechanism):
        when += [f"{f.name}: {f.metadata[OPTIONAL]}" for f in fields(cls) if f.metadata.get(OPTIONAL)]
    by_reason: dict[str, list[str]] = {}
    for f in fields(Mechanism):
        if "not_applicable" in f.metadata:
            by_reason.setdefault(f.metadata["not_applicable"], []).append(f.name)
    why = [f"{', '.join(names)}: {reason}" for reason, names in by_reason.items()]
    wrap = lambda s: textwrap.fill(s, width, initial_indent="    ", subsequent_indent="    ")  # noqa: E731
    return "\n".join(
        [
            wrap("mechanism" + schema_text(Mechanism)),
            wrap("Present only when computed: " + "; ".join(when) + "."),
            wrap("Not applicable ({applicable: false, reason}): " + "; ".join(why) + "."),
        ]
    )
