"""Calibration statistics of every Linear layer's input, for quantization.

Design: the forward that collects them lives in `sinkhole.quant.calibration` (one
pre-forward hook per `nn.Linear` inside the decoder layers); this module holds the reductions it
folds each input into (`reduce_rows`, `LinearInputStats.fold`), so memory is O(channels) per module
whatever the amount of calibration text: no activation is ever stored. Sequences run one at a time
(batch 1, no padding), so every position is a real token.

Definitions, for the input x (T tokens, C channels) of one Linear on one sequence:
- channel absmax a[c] = max over all calibration tokens of |x[t, c]| (SmoothQuant's activation scale).
- channel ratio of c = a[c] / median_c' a[c']: how far channel c sticks out of the typical channel.
- share >= 6 = share of all values with |x| >= 6 (LLM.int8()'s default outlier threshold).
- token max m[t] = max_c |x[t, c]|; token ratio r[t] = m[t] / median_s m[s] over the tokens s of the
  same sequence (PrefixQuant's top-1 / median statistic).
- outlier token: r[t] > 64 (PrefixQuant's rule, eta = 64).
- per-tensor absmax = max_c a[c]: the scale a naive per-tensor static int8 quantizer would use.
`skip_positions` leaves the first positions of every sequence out of all of these (the prefix rows
of a PrefixQuant/CushionCache run, whose KV is computed once in float).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from sinkhole.results.quant import (
    STATS_SCHEMA,
    ModuleStats,
    OutlierExample,
    OutlierToken,
    QuantModel,
    QuantStats,
    TopChannel,
)

OUTLIER_TOKEN_RATIO = 64.0  # PrefixQuant's eta
INT8_OUTLIER_THRESHOLD = 6.0  # LLM.int8()'s default
THRESHOLD_EDGES = (1.0, 2.0, 4.0, 6.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
MAX_TOKEN_EXAMPLES = 16  # outlier token examples kept per module (counts are complete)


@dataclass
class RowReduction:
    """What one sequence's Linear input contributes to the running statistics."""

    channel_absmax: torch.Tensor  # (C,) float32 on CPU
    count_ge: np.ndarray  # (E,) values with |x| >= edge
    columns_ge: np.ndarray  # (E,) channels whose max |x| >= edge
    n_values: int
    token_ratio: np.ndarray  # (T,) token max / median token max


@torch.no_grad()
def reduce_rows(x: torch.Tensor) -> RowReduction | None:
    """x (T, C) -> its reductions; None when T == 0."""
    a = x.detach().abs().float()
    if a.shape[0] == 0:
        return None
    edges = torch.tensor(THRESHOLD_EDGES, device=a.device)
    n_edges = len(THRESHOLD_EDGES)

    def ge_counts(v: torch.Tensor) -> np.ndarray:
        # bucket b holds values in [edge[b-1], edge[b]); a reversed cumulative sum counts values >= edge.
        hist = torch.bincount(torch.bucketize(v.flatten(), edges, right=True), minlength=n_edges + 1)
        return hist.flip(0).cumsum(0).flip(0)[1:].cpu().numpy()

    col_max = a.amax(dim=0)  # (C,)
    tok_max = a.amax(dim=1)  # (T,)
    return RowReduction(
        channel_absmax=col_max.cpu(),
        count_ge=ge_counts(a),
        columns_ge=ge_counts(col_max),
        n_values=a.numel(),
        token_ratio=(tok_max / tok_max.median().clamp_min(1e-30)).cpu().numpy(),
    )


@dataclass
class LinearInputStats:
    """Running statistics of one Linear's input. `update` takes (T, C) rows of one sequence."""

    name: str
    layer: int | None
    kind: str  # last part of the module name: q_proj, down_proj, ...
    n_channels: int
    input_group: str = ""  # first module (in forward order) that reads the same input tensor
    channel_absmax: torch.Tensor = None  # (C,) float32
    n_values: int = 0
    n_tokens: int = 0
    n_sequences: int = 0
    count_ge: np.ndarray = None  # (len(THRESHOLD_EDGES),) values with |x| >= edge
    columns_ge: np.ndarray = None  # (len(edges),) sum over sequences of #channels with max |x| >= edge
    token_ratio_max: float = 0.0
    n_outlier_tokens: int = 0
    outlier_positions: Counter = field(default_factory=Counter)
    outlier_token_ids: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)  # [{sequence, position, token_id, ratio}]

    def __post_init__(self):
        if self.channel_absmax is None:
            self.channel_absmax = torch.zeros(self.n_channels)
        if self.count_ge is None:
            self.count_ge = np.zeros(len(THRESHOLD_EDGES), dtype=np.int64)
        if self.columns_ge is None:
            self.columns_ge = np.zeros(len(THRESHOLD_EDGES), dtype=np.int64)

    def update(self, x: torch.Tensor, token_ids: Sequence[int] | None = None, offset: int = 0) -> None:
        """Fold one sequence's input rows x (T, C) into the running statistics."""
        self.fold(reduce_rows(x), token_ids, offset)

    def fold(self, r: RowReduction | None, token_ids: Sequence[int] | None = None, offset: int = 0) -> None:
        if r is None:
            return
        self.channel_absmax = torch.maximum(self.channel_absmax, r.channel_absmax)
        self.count_ge += r.count_ge
        self.columns_ge += r.columns_ge
        self.n_values += r.n_values
        self.n_tokens += len(r.token_ratio)
        self.token_ratio_max = max(self.token_ratio_max, float(r.token_ratio.max()))
        for t in np.flatnonzero(r.token_ratio > OUTLIER_TOKEN_RATIO).tolist():
            pos = t + offset
            tid = int(token_ids[pos]) if token_ids is not None else -1
            self.n_outlier_tokens += 1
            self.outlier_positions[pos] += 1
            self.outlier_token_ids[tid] += 1
            if len(self.examples) < MAX_TOKEN_EXAMPLES:
                self.examples.append(
                    {"sequence": self.n_sequences, "position": pos, "token_id": tid, "ratio": float(r.token_ratio[t])}
                )
        self.n_sequences += 1

    @property
    def absmax(self) -> float:
        return float(self.channel_absmax.max())

    def channel_ratios(self) -> torch.Tensor:
        """(C,) channel absmax over the median channel absmax."""
        return self.channel_absmax / self.channel_absmax.median().clamp_min(1e-30)

    def share_ge(self, threshold: float = INT8_OUTLIER_THRESHOLD) -> float:
        i = THRESHOLD_EDGES.index(threshold)
        return float(self.count_ge[i]) / max(self.n_values, 1)

    def mean_outlier_columns(self, threshold: float) -> float:
        """Mean over sequences of the number of channels with some |x| >= threshold (LLM.int8's fp16 columns)."""
        return float(self.columns_ge[THRESHOLD_EDGES.index(threshold)]) / max(self.n_sequences, 1)

    def result(self, top: int = 8, tokenizer=None) -> ModuleStats:
        """The typed statistics of this input (`top` channels by absmax; `tokenizer` decodes the outlier
        tokens' texts)."""
        ratios = self.channel_ratios()
        order = torch.argsort(self.channel_absmax, descending=True)[:top].tolist()

        def text(tid: int) -> str | None:
            return tokenizer.decode([tid]) if tokenizer is not None and tid >= 0 else None

        return ModuleStats(
            name=self.name,
            layer=self.layer,
            kind=self.kind,
            n_channels=self.n_channels,
            input_group=self.input_group,
            absmax=self.absmax,
            median_channel_absmax=float(self.channel_absmax.median()),
            top_channels=[TopChannel(c, float(self.channel_absmax[c]), float(ratios[c])) for c in order],
            share_ge_6=self.share_ge(INT8_OUTLIER_THRESHOLD),
            token_ratio_max=self.token_ratio_max,
            n_outlier_tokens=self.n_outlier_tokens,
            outlier_positions={str(k): v for k, v in sorted(self.outlier_positions.items())},
            outlier_tokens=[OutlierToken(k, text(k), v) for k, v in self.outlier_token_ids.most_common(8)],
            examples=[OutlierExample(**e) for e in self.examples],
        )

    def to_dict(self, top: int = 8, tokenizer=None) -> dict:
        return self.result(top=top, tokenizer=tokenizer).to_dict()


@dataclass
class CalibrationStats:
    """Statistics of every decoder Linear's input over a calibration set (see the module docstring)."""

    model: dict  # {name, architecture, weights_id, n_layers}
    modules: dict[str, LinearInputStats]  # module name -> stats, in model order
    n_sequences: int
    n_tokens: int
    source: str
    skip_positions: int = 0
    first_token_ids: list[int] = field(default_factory=list)  # token 0 of each calibration sequence

    def hot_modules(self, min_ratio: float = OUTLIER_TOKEN_RATIO) -> list[str]:
        """Modules whose largest token ratio exceeds `min_ratio` (they see PrefixQuant outlier tokens)."""
        return [n for n, s in self.modules.items() if s.token_ratio_max > min_ratio]

    def result(self, tokenizer=None, top: int = 8) -> QuantStats:
        """The typed result (`sinkhole.results.quant.QuantStats`): what `--stats-json` writes and the
        terminal table shows; `tokenizer` decodes the outlier tokens' texts."""
        return QuantStats(
            schema=STATS_SCHEMA,
            model=QuantModel.from_dict(self.model),
            source=self.source,
            n_sequences=self.n_sequences,
            n_tokens=self.n_tokens,
            skip_positions=self.skip_positions,
            outlier_token_ratio=OUTLIER_TOKEN_RATIO,
            modules=[s.result(top=top, tokenizer=tokenizer) for s in self.modules.values()],
        )

    def to_dict(self, tokenizer=None, top: int = 8) -> dict:
        return self.result(tokenizer=tokenizer, top=top).to_dict()


def decoder_linears(model: nn.Module, family) -> dict[str, tuple[int, nn.Linear]]:
    """Full module name -> (layer index, Linear) for every Linear inside the decoder layers, in order."""
    layers = family.decoder_layers(model)
    index = {id(layer): i for i, layer in enumerate(layers)}
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        prefix, _, _ = name.rpartition(".")
        # The layer is the nearest ancestor that is a decoder layer.
        parts = prefix.split(".")
        for k in range(len(parts), 0, -1):
            anc = model.get_submodule(".".join(parts[:k]))
            if id(anc) in index:
                out[name] = (index[id(anc)], module)
                break
    return out
