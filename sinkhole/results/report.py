"""The report: one typed, JSON-ready structure that every renderer (terminal, JSON, HTML) reads.

Design: `analyze()` returns a `Report` whose model (`ModelInfo`) and sections are results on the one
base (sinkhole.results.base: `Spikes`, `Sinks`, `Overlap`, `KV`, `Layers`, `Heads`, `Residual`,
`LearnedSinks`), read by attribute (`s.score`); dicts exist only at the edge (`to_dict()` for the JSON
writer and the HTML embed, `Report.from_dict` for `compare`, which reads files back). Every field of a
row is written, None as null. `Report.detail` (`Detail`) holds what renderers need beyond the JSON
(the page's per-head attention and spike-channel values, the eval rows' channel values); it is filled
from the Capture by `analyze()` and never written to JSON.

JSON schema "sinkhole.report/1", generated from the dataclasses by `schema_doc()` (tests/test_schema.py
checks this text, README.md's JSON section and a real report file against it). [T]: one per token,
[L]: one per layer, [L][H]: per layer and head. Keys always present:
    schema, model{name, architecture, family, norm_style, n_layers, n_heads, n_kv_heads, d_model,
    d_head, max_context, weights_id, dtype, discovery, layer_kinds[L], learned_sinks, attention_path},
    tokens[{position, id, text}], spikes{threshold, tokens[{position, text, score, max_norm, top_value,
    layer, channel, channels, step_up_layers, step_down_layers}], per_token_score[T]}, sinks{epsilon,
    min_sink_rate, top{position, text, attn_mass, sink_rate, n_heads}, tokens[{position, text,
    attn_mass, sink_rate, n_heads}], per_token_mass[T], per_token_sink_rate[T]}, overlap{jaccard,
    positions}, kv{sink_attention_share, sink_slot_share, n_sink_slots, n_slots}, layers{max_norm[L],
    median_norm[L], kinds[L], attention}, prompt, chat
Optional keys (present when computed):
    heads{mass_on_top_sink[L][H], top_sink_position}, residual{norm[L][T], attn_out_norm[L][T],
    ffn_out_norm[L][T], embed_norm[T]}, learned_sinks{definition, mean_share, max{layer, head, share},
    per_layer_mean[L], share[L][H], top_token_sink{position, alpha[L][H]}}
`analyze()` always writes heads and residual; learned_sinks only for models with sink logits (gpt-oss).
Any other top-level key is an extra section (`Report.extra`, drawn as a generic tree on the page).
`sinkhole mechanism` writes its example prompt's report with one more key, `mechanism` (`MechanismResult`,
typed and documented in sinkhole.results.mechanism; docs/mechanism.md). `overlap.jaccard` is null
when there is neither a spike nor a sink token; values not measured (a hybrid's non-attention layers) are
null.
"""

from __future__ import annotations

import json
import textwrap
import typing
from dataclasses import dataclass, field, fields

from sinkhole.results.base import Result, jsonable, row_types, schema_text, shape, write_json

__all__ = ["write_json"]  # the JSON writer every command uses, re-exported from results.base

SCHEMA = "sinkhole.report/1"


@dataclass
class ModelInfo(Result):
    """What the probe found about the model (the report's `model`); filled by sinkhole.probe."""

    name: str
    architecture: str  # model_type, e.g. "llama", "gemma3_text"
    family: str
    norm_style: str  # "pre", "sandwich", "post", "parallel", "inside" (see sinkhole.models.families)
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    max_context: int | None = None
    weights_id: str = ""
    dtype: str = "float32"
    discovery: str = "auto"  # how the layout was found: "auto" or "override:<model_type>"
    layer_kinds: list[str] = shape("[L]", default_factory=list)  # per layer: "attention" or the other kind
    learned_sinks: bool = False  # the attention has per-head sink logits (gpt-oss s_aux)
    attention_path: str = "interface"  # "interface" (sinkhole attention) or "eager" (output_attentions fallback)

    @property
    def attention_layers(self) -> list[int]:
        return (
            [i for i, k in enumerate(self.layer_kinds) if k == "attention"]
            if self.layer_kinds
            else list(range(self.n_layers))
        )


@dataclass
class Token(Result):
    position: int
    id: int
    text: str


@dataclass
class SpikeToken(Result):
    position: int
    text: str
    score: float  # peak residual norm / median over tokens of the peak norm
    max_norm: float  # max over layers of ||h_l[t]||_2
    top_value: float  # signed h_l[t, c] of largest magnitude over layers and channels
    layer: int  # layer of top_value
    channel: int  # channel of top_value
    channels: list[int]  # spike channels (see sinkhole.analysis.core.spike_channels)
    step_up_layers: list[int]  # layers that raise the token's residual norm by >= 10% of its peak
    step_down_layers: list[int]  # layers that lower it by >= 10% of its peak


@dataclass
class SinkToken(Result):
    position: int
    text: str
    attn_mass: float  # mean over (layer, head) of alpha
    sink_rate: float  # share of (layer, head) with alpha > epsilon
    n_heads: int  # number of (layer, head) pairs with alpha > epsilon


@dataclass
class Spikes(Result):
    threshold: float
    tokens: list[SpikeToken]  # tokens with S[t] > threshold, by position
    per_token_score: list[float] = field(default_factory=list, metadata={"shape": "[T]"})  # S[t]


@dataclass
class Sinks(Result):
    epsilon: float
    min_sink_rate: float
    top: SinkToken  # the token with the largest attention mass (a sink token or not)
    tokens: list[SinkToken]  # sink rate >= min_sink_rate, by attention mass, largest first
    per_token_mass: list[float] = field(metadata={"shape": "[T]"})
    per_token_sink_rate: list[float] = field(metadata={"shape": "[T]"})


@dataclass
class Overlap(Result):
    jaccard: float | None  # |spikes ∩ sinks| / |spikes ∪ sinks| of the position sets; None if both empty
    positions: list[int]  # positions that are both


@dataclass
class KV(Result):
    sink_attention_share: float  # share of all attention probability on sink tokens' KV slots
    sink_slot_share: float  # sink tokens / T
    n_sink_slots: int
    n_slots: int


@dataclass
class Layers(Result):
    max_norm: list[float] = field(metadata={"shape": "[L]"})  # max over tokens of ||h_l[t]||
    median_norm: list[float] = field(default_factory=list, metadata={"shape": "[L]"})
    kinds: list[str] = field(default_factory=list, metadata={"shape": "[L]"})  # "attention" or the other kind
    attention: list[int] = field(default_factory=list)  # the attention layers


@dataclass
class Heads(Result):
    mass_on_top_sink: list[list[float | None]] = field(metadata={"shape": "[L][H]"})  # alpha_{l,h}(top sink)
    top_sink_position: int


@dataclass
class Residual(Result):
    norm: list[list[float]] = field(metadata={"shape": "[L][T]"})  # ||h_l[t]||
    attn_out_norm: list[list[float | None]] = field(metadata={"shape": "[L][T]"})  # attention block output
    ffn_out_norm: list[list[float | None]] = field(metadata={"shape": "[L][T]"})  # FFN block output
    embed_norm: list[float] = field(metadata={"shape": "[T]"})  # ||residual entering layer 0 at t||


@dataclass
class LearnedSinks(Result):
    """gpt-oss style per-head sink logits (sinkhole.analysis.core.learned_sinks)."""

    definition: str
    mean_share: float
    max: dict = field(metadata={"keys": "{layer, head, share}"})
    per_layer_mean: list[float | None] = field(metadata={"shape": "[L]"})
    share: list[list[float | None]] = field(metadata={"shape": "[L][H]"})  # null on non-attention layers
    top_token_sink: dict = field(metadata={"keys": "{position, alpha[L][H]}"})


MAPS_MAX_LEN = 96  # `Detail.maps` (full query x key maps, drawn by the page) for inputs up to this many tokens:
# producers pass it to the probe (ModelProbe(maps_max_len=...)); longer inputs get the per-key view


@dataclass
class Detail:
    """What renderers need beyond the JSON, taken from the Capture by `analyze()`; never written to JSON
    (the arrays are large, and the JSON stays what it was). Shapes: L layers, H heads, T tokens.

    alpha      (L, H, T) alpha_{l,h}(k), NaN on non-attention layers (the page's per-key view).
    maps       (L, H, T, T) float16 attention maps, when the probe kept them (T <= its maps_max_len,
               MAPS_MAX_LEN for the page).
    channels   the channels the page draws across layers; `channels_why` says how they were chosen.
    top_k      K of the probe's top-K record per (layer, token).
    channel_values  (T, C, L) h_l[t, c] of each drawn channel, NaN where c is not among t's top K at l.
    spike_channel_values  per spike token (Spikes.tokens order): the signed h at its top layer for each
               of its spike channels (the eval rows' `channel_values`).
    """

    alpha: typing.Any
    maps: typing.Any
    channels: list[int]
    channels_why: str
    top_k: int
    channel_values: typing.Any
    spike_channel_values: list[list[float]]


# The sections after `layers`, in the JSON's order; None = not computed, left out of the JSON.
OPTIONAL_SECTIONS = ("heads", "residual", "learned_sinks")


@dataclass
class Report(Result):
    model: ModelInfo
    tokens: list[Token]
    spikes: Spikes
    sinks: Sinks
    overlap: Overlap
    kv: KV
    layers: Layers
    prompt: str | None = None
    chat: bool = False
    heads: Heads | None = None
    residual: Residual | None = None
    learned_sinks: LearnedSinks | None = None
    extra: dict = field(default_factory=dict)  # other sections (drawn as generic trees on the page)
    detail: Detail | None = field(default=None, repr=False, compare=False)  # renderers only, never JSON

    def to_dict(self) -> dict:
        d = {"schema": SCHEMA, "model": self.model.to_dict(), "tokens": [t.to_dict() for t in self.tokens]}
        for k in ("spikes", "sinks", "overlap", "kv", "layers"):
            d[k] = getattr(self, k).to_dict()
        d["prompt"], d["chat"] = self.prompt, self.chat
        for k in OPTIONAL_SECTIONS:
            if getattr(self, k) is not None:
                d[k] = getattr(self, k).to_dict()
        d.update(self.extra)
        return jsonable(d)

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        """A report read back from its JSON (no `detail`); unknown keys go to `extra`."""
        known = {f.name for f in fields(cls)} - {"extra", "detail"}
        r = super().from_dict({k: v for k, v in d.items() if k in known})
        r.extra = {k: v for k, v in d.items() if k not in known and k != "schema"}
        return r

    @property
    def spike_tokens(self) -> list[SpikeToken]:
        """The spike tokens as typed rows (`.position`, `.score`, ...; `["score"]` works too)."""
        return self.spikes.tokens

    @property
    def sink_tokens(self) -> list[SinkToken]:
        """The sink tokens as typed rows (`.position`, `.attn_mass`, `.sink_rate`, ...)."""
        return self.sinks.tokens

    @property
    def top_sink(self) -> SinkToken:
        """The token with the largest attention mass (a sink token or not)."""
        return self.sinks.top


# ---------- the schema text, generated from the dataclasses ----------


def documented_keys() -> tuple[list[str], list[str]]:
    """(always-present, optional) top-level keys with their sub-keys, e.g. 'spikes{threshold, ...}'."""
    hints = typing.get_type_hints(Report)
    always, optional = ["schema"], []
    for f in fields(Report):
        if f.name in ("extra", "detail"):
            continue
        sub = schema_text(hints[f.name])
        text = f.name + (f"[{sub}]" if row_types(hints[f.name])[1] and sub else sub)
        (optional if f.name in OPTIONAL_SECTIONS else always).append(text)
    return always, optional


def schema_doc(width: int = 104) -> str:
    """The key listing of this module's docstring (whitespace aside); tests keep the two equal."""
    always, optional = documented_keys()
    wrap = lambda xs: textwrap.fill(", ".join(xs), width, initial_indent="    ", subsequent_indent="    ")  # noqa: E731
    return f"Keys always present:\n{wrap(always)}\nOptional keys (present when computed):\n{wrap(optional)}"
