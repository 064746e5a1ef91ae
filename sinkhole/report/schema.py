"""The report: one typed, JSON-ready structure that every renderer (terminal, JSON, HTML) reads.

JSON schema "sinkhole.report/1". Keys always present:
    schema, model{name, architecture, family, norm_style, n_layers, n_heads, n_kv_heads, d_model,
    d_head, max_context, weights_id, dtype}, prompt, chat, tokens[{position, id, text}],
    spikes{threshold, tokens[SpikeToken]}, sinks{epsilon, min_sink_rate, top, tokens[SinkToken],
    per_token_mass[T], per_token_sink_rate[T]}, overlap{jaccard, positions},
    kv{sink_attention_share, sink_slot_share, n_sink_slots, n_slots}, layers{max_norm[L]}.
Optional keys (present when computed): heads{mass_on_top_sink[L][H]}, learned_sinks{...}, lifecycle{...},
attention_maps{...} (HTML only), mechanism{...}, eval{...}.
`overlap.jaccard` is null when there is neither a spike nor a sink token.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA = "sinkhole.report/1"


class _Row:
    """Typed rows that still read like the JSON dicts: `row.score` and `row["score"]` both work."""

    def __getitem__(self, key: str):
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default=None):
        return getattr(self, key, default) if key in self.__dataclass_fields__ else default

    def keys(self):
        return list(self.__dataclass_fields__)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class SpikeToken(_Row):
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
class SinkToken(_Row):
    position: int
    text: str
    attn_mass: float  # mean over (layer, head) of alpha
    sink_rate: float  # share of (layer, head) with alpha > epsilon
    n_heads: int  # number of (layer, head) pairs with alpha > epsilon


@dataclass
class Report:
    model: dict
    tokens: list[dict]
    spikes: dict
    sinks: dict
    overlap: dict
    kv: dict
    layers: dict
    prompt: str | None = None
    chat: bool = False
    extra: dict = field(default_factory=dict)  # optional sections: heads, lifecycle, mechanism, eval ...

    def to_dict(self) -> dict:
        d = {"schema": SCHEMA}
        d.update({k: v for k, v in asdict(self).items() if k != "extra"})
        d.update(self.extra)
        return _jsonable(d)

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)

    @property
    def spike_tokens(self) -> list[SpikeToken]:
        """The spike tokens as typed rows (`.position`, `.score`, ...; `["score"]` works too)."""
        return [SpikeToken.from_dict(d) for d in self.spikes["tokens"]]

    @property
    def sink_tokens(self) -> list[SinkToken]:
        """The sink tokens as typed rows (`.position`, `.attn_mass`, `.sink_rate`, ...)."""
        return [SinkToken.from_dict(d) for d in self.sinks["tokens"]]

    @property
    def top_sink(self) -> SinkToken:
        """The token with the largest attention mass (a sink token or not)."""
        return SinkToken.from_dict(self.sinks["top"])


def _jsonable(x):
    """Plain Python types only; NaN/inf become null so the file is strict JSON."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):  # numpy scalars and arrays
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(report: Report | dict, path: str | Path, what: str = "JSON report") -> None:
    """Strict JSON through the checked writer (`-`: stdout; a failed write is rescued and reported)."""
    from sinkhole.io import write_output

    d = report.to_dict() if isinstance(report, Report) else _jsonable(report)
    write_output(path, json.dumps(d, indent=1, ensure_ascii=False, allow_nan=False), what)
