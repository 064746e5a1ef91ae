"""Two reports side by side (`sinkhole compare`): what changed in spikes, sinks, channels and heads.

Inputs are JSON files sinkhole wrote: two `analyze` reports ("sinkhole.report/1", e.g. two models on
one prompt, or one model on two prompts) or two eval runs ("sinkhole.eval-summary/1"; a run
directory stands for its summary.json). `load` reads a file back into its typed result (`Report`,
`EvalSummary`); `compare(a, b)` returns the typed comparison (sinkhole.results.compare), which
sinkhole.render.compare_text prints and sinkhole.render.compare_page draws.

Matching: spike and sink tokens are matched by position (a position in one report only is "added"
or "removed"); spike channels are compared as sets (the union over spike tokens); heads by
(layer, head) when both models have the same layers x heads, otherwise only their counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sinkhole.analysis.core import order_channels
from sinkhole.errors import SinkholeError
from sinkhole.results.compare import (
    ChannelChanges,
    EvalChannels,
    EvalComparison,
    HeadChange,
    HeadChanges,
    ReportComparison,
    SinkAt,
    SinkChanges,
    SinkPair,
    SinkValues,
    SpikeAt,
    SpikeChanges,
    SpikePair,
    SpikeValues,
)
from sinkhole.results.eval import SUMMARY_SCHEMA, EvalSummary
from sinkhole.results.report import SCHEMA as REPORT_SCHEMA
from sinkhole.results.report import Report

TOP_HEADS = 10  # heads with the largest change in alpha on the top sink, listed


@dataclass
class Loaded:
    """A file `load` read: its path and its schema, and the dict it holds (typed by `compare`)."""

    path: str
    schema: str
    data: dict


def load(path: str | Path) -> Loaded:
    """A report or eval summary; a directory means its summary.json. One-line errors for anything else."""
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SinkholeError(f"not found: {p}") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise SinkholeError(f"cannot read {p} as JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(d, dict) or d.get("schema") not in (REPORT_SCHEMA, SUMMARY_SCHEMA):
        raise SinkholeError(
            f"{p} is neither an analyze report ({REPORT_SCHEMA}) nor an eval summary ({SUMMARY_SCHEMA})"
        )
    return Loaded(str(p), d["schema"], d)


def compare(a: Loaded, b: Loaded) -> ReportComparison | EvalComparison:
    """The comparison of two files `load` read: two reports or two eval summaries."""
    if a.schema != b.schema:
        raise SinkholeError("compare two analyze reports or two eval runs, not one of each")
    if a.schema == REPORT_SCHEMA:  # read back into typed reports at this edge
        return compare_reports(_report(a), _report(b), (a.path, b.path))
    return compare_evals(EvalSummary.from_dict(a.data), EvalSummary.from_dict(b.data), (a.path, b.path))


def _report(f: Loaded) -> Report:
    try:
        return Report.from_dict(f.data)
    except (KeyError, TypeError, AttributeError) as err:
        raise SinkholeError(f"{f.path} is not a complete {REPORT_SCHEMA} report ({err})") from None


def _channels(r: Report) -> list[int]:
    return order_channels([s.channels for s in r.spikes.tokens])


def _spikes(a: Report, b: Report) -> SpikeChanges:
    pa, pb = {t.position: t for t in a.spikes.tokens}, {t.position: t for t in b.spikes.tokens}
    values = lambda t: SpikeValues(t.text, t.score, t.layer, t.channel, t.channels)  # noqa: E731
    at = lambda t: SpikeAt(t.position, t.text, t.score, t.layer, t.channel, t.channels)  # noqa: E731
    return SpikeChanges(
        n=[len(a.spikes.tokens), len(b.spikes.tokens)],
        top_score=[max(a.spikes.per_token_score or [0]), max(b.spikes.per_token_score or [0])],
        both=[SpikePair(p, values(pa[p]), values(pb[p])) for p in sorted(set(pa) & set(pb))],
        only_a=[at(pa[p]) for p in sorted(set(pa) - set(pb))],
        only_b=[at(pb[p]) for p in sorted(set(pb) - set(pa))],
    )


def _sinks(a: Report, b: Report) -> SinkChanges:
    pa, pb = {t.position: t for t in a.sinks.tokens}, {t.position: t for t in b.sinks.tokens}
    values = lambda t: SinkValues(t.text, t.attn_mass, t.sink_rate)  # noqa: E731
    at = lambda t: SinkAt(t.position, t.text, t.attn_mass, t.sink_rate)  # noqa: E731
    return SinkChanges(
        n=[len(a.sinks.tokens), len(b.sinks.tokens)],
        top=[at(a.sinks.top), at(b.sinks.top)],
        both=[SinkPair(p, values(pa[p]), values(pb[p])) for p in sorted(set(pa) & set(pb))],
        only_a=[at(pa[p]) for p in sorted(set(pa) - set(pb))],
        only_b=[at(pb[p]) for p in sorted(set(pb) - set(pa))],
    )


def _heads(a: Report, b: Report) -> HeadChanges:
    ha = a.heads.mass_on_top_sink if a.heads is not None else None
    hb = b.heads.mass_on_top_sink if b.heads is not None else None
    eps_a, eps_b = a.sinks.epsilon, b.sinks.epsilon
    out = HeadChanges(
        n_sink_heads=[
            None if ha is None else sum(v > eps_a for row in ha for v in row),
            None if hb is None else sum(v > eps_b for row in hb for v in row),
        ],
        n_heads=[None if ha is None else sum(len(r) for r in ha), None if hb is None else sum(len(r) for r in hb)],
        same_shape=bool(ha and hb and len(ha) == len(hb) and all(len(x) == len(y) for x, y in zip(ha, hb))),
    )
    if out.same_shape:
        diff = [[y - x for x, y in zip(ra, rb)] for ra, rb in zip(ha, hb)]
        cells = sorted(((abs(d), l, h) for l, row in enumerate(diff) for h, d in enumerate(row)), reverse=True)
        out.diff = diff
        out.largest_changes = [HeadChange(l, h, ha[l][h], hb[l][h]) for _, l, h in cells[:TOP_HEADS]]
        out.started_sinking = [[l, h] for l, row in enumerate(ha) for h, v in enumerate(row) if v <= eps_a < hb[l][h]]
        out.stopped_sinking = [[l, h] for l, row in enumerate(ha) for h, v in enumerate(row) if v > eps_a >= hb[l][h]]
    return out


def compare_reports(a: Report, b: Report, files: tuple = (None, None)) -> ReportComparison:
    """Two typed reports (`Report.from_dict` of the files `load` read); `files`: their paths, for the output."""
    ca, cb = _channels(a), _channels(b)
    return ReportComparison(
        files=list(files),
        models=[a.model.name, b.model.name],
        weights=[a.model.weights_id, b.model.weights_id],
        n_tokens=[len(a.tokens), len(b.tokens)],
        same_prompt=a.prompt == b.prompt and [t.id for t in a.tokens] == [t.id for t in b.tokens],
        spikes=_spikes(a, b),
        sinks=_sinks(a, b),
        channels=ChannelChanges(
            a=ca,
            b=cb,
            both=[c for c in ca if c in cb],
            only_a=[c for c in ca if c not in cb],
            only_b=[c for c in cb if c not in ca],
        ),
        jaccard=[a.overlap.jaccard, b.overlap.jaccard],
        kv=[a.kv.sink_attention_share, b.kv.sink_attention_share],
        heads=_heads(a, b),
    )


def compare_evals(a: EvalSummary, b: EvalSummary, files: tuple = (None, None)) -> EvalComparison:
    """Two eval summaries (summary.json read back); `files`: their paths, for the output."""
    ma, mb = a.metrics, b.metrics
    cats = [c for c in a.per_category if c in b.per_category]
    return EvalComparison(
        files=list(files),
        models=[a.model_name, b.model_name],
        n_prompts=[a.n_prompts, b.n_prompts],
        metrics={k: [ma[k].mean, mb[k].mean] for k in ma if k in mb},
        channels=EvalChannels(
            a=a.spike_channels.most_common_set,
            b=b.spike_channels.most_common_set,
            share=[a.spike_channels.same_set_share, b.spike_channels.same_set_share],
        ),
        top_sink_positions=[a.top_sink_positions, b.top_sink_positions],
        length_vs_sink_mass_r=[a.length_vs_sink_mass_r, b.length_vs_sink_mass_r],
        per_category={
            c: {
                k: [a.per_category[c].metrics[k].mean, b.per_category[c].metrics[k].mean]
                for k in ("spike_score", "sink_mass")
            }
            for c in cats
        },
    )
