"""Aggregate the typed rows (`EvalRow`, sinkhole.results.eval) into the run's summary (`EvalSummary`,
summary.json; sinkhole.render.eval_text prints it like the original 400-prompt study).

Every per-prompt number is one `analyze` computed (see sinkhole.eval.runner.prompt_row); here we
only take statistics over prompts:
- per metric: mean, std (population, ddof=0), min, max, and n (prompts with a value; `jaccard` is
  null for a prompt with neither spike nor sink, and such prompts are left out of its statistics),
  overall and per category;
- spike channels: the most common per-prompt channel set and the share of prompts that have exactly
  it ("the same 4 channels in all 400"), among prompts with at least one spike; how often each
  channel occurs; the mean of its signed value;
- the share of prompts whose top sink is at each position (position 0, ...);
- Pearson r between the sequence length (tokens) and the top sink's attention mass.

Rows given as dicts of the row's keys (rows from other tools) are typed first (`EvalRow.from_dict`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from sinkhole.analysis.core import order_channels
from sinkhole.results.eval import (
    METRICS,
    CategorySummary,
    ChannelStat,
    ChannelSummary,
    EvalRow,
    EvalSummary,
    MetricStats,
    as_rows,
)


def stats(values) -> MetricStats:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return MetricStats(mean=None, std=None, min=None, max=None, n=0)
    return MetricStats(mean=float(v.mean()), std=float(v.std()), min=float(v.min()), max=float(v.max()), n=int(v.size))


def pearson(x, y) -> float | None:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def metric_stats(rows: list[EvalRow]) -> dict[str, MetricStats]:
    return {k: stats(getattr(r, k) for r in rows) for k in METRICS}


def channel_summary(rows: list[EvalRow]) -> ChannelSummary:
    spiking = [r for r in rows if r.spikes]
    # sets, not sequences: rows written before the one channel order (sorted ids) count with the rest
    sets = Counter(frozenset(r.spike_channels) for r in spiking)
    top, mode_n = sets.most_common(1)[0] if sets else (frozenset(), 0)
    mode = order_channels([r.spike_channels for r in spiking if frozenset(r.spike_channels) == top])
    counts: Counter = Counter()
    values: dict[int, list[float]] = {}
    for r in spiking:
        counts.update(r.spike_channels)
        for s in r.spikes:
            for c, v in zip(s.channels, s.channel_values):
                values.setdefault(c, []).append(v)
    order = order_channels([r.spike_channels for r in spiking])  # ties in frequency: core's one order
    channels = [
        ChannelStat(channel=c, frequency=n / len(spiking), mean_value=float(np.mean(values[c])))
        for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], order.index(kv[0]), kv[0]))
    ]
    return ChannelSummary(
        prompts_with_spikes=len(spiking),
        most_common_set=list(mode),
        same_set_share=mode_n / len(spiking) if spiking else None,
        distinct_sets=len(sets),
        channels=channels,
    )


def summarize(rows: list[EvalRow | dict], run: dict | None = None) -> EvalSummary:
    """The summary (summary.json) of a finished (or partial) run; `run`: its run.json."""
    rows = as_rows(rows)
    cats = sorted({r.category for r in rows})
    tops = Counter(r.top_sink.position for r in rows)
    return EvalSummary(
        run=run or {},
        n_prompts=len(rows),
        metrics=metric_stats(rows),
        per_category={
            c: CategorySummary(
                n_prompts=sum(r.category == c for r in rows),
                metrics=metric_stats([r for r in rows if r.category == c]),
            )
            for c in cats
        },
        spike_channels=channel_summary(rows),
        top_sink_positions={str(p): n / len(rows) for p, n in sorted(tops.items())} if rows else {},
        length_vs_sink_mass_r=pearson([r.n_tokens for r in rows], [r.sink_mass for r in rows]),
    )
