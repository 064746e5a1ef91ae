"""Terminal summary of an eval run (`sinkhole eval`): summary.json's numbers as the original 400-prompt study
printed them, from the typed summary (`EvalSummary`, sinkhole.results.eval; sinkhole.eval.aggregate
computes it); eval_page sets the same numbers in HTML."""

from __future__ import annotations

import math

from sinkhole.render.analyze_text import chat_label, pct, plural
from sinkhole.results.eval import METRICS, PERCENT, EvalSummary, MetricStats


def fmt_metric(key: str, x) -> str:
    """One value of metric `key` as the table prints it: shares as percentages, the spike score as 2.5x."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if key in PERCENT:
        return pct(x)
    if key == "spike_score":
        return f"{x:.1f}x"
    return f"{x:.2f}"


def fmt_std(key: str, x: float) -> str:
    """A standard deviation of metric `key` (shares in percentage points, 2 decimals)."""
    return f"{100 * x:.2f}%" if key in PERCENT else f"{x:.2f}"


def std_cell(key: str, s: MetricStats) -> str:
    """'± std' of a metric's statistics `s`, or '' where it says nothing: no value, or one prompt (whose
    std of 0 is no measure of spread)."""
    return "" if s.std is None or s.n < 2 else "± " + fmt_std(key, s.std)


CATEGORY_KEYS = ("spike_score", "sink_mass", "sink_rate", "n_spikes", "jaccard", "n_tokens")  # per-category table


def mean_std(key: str, s: MetricStats) -> str:
    """A per-category cell: 'mean ± std', the mean alone for one prompt, or n/a."""
    if s.mean is None:
        return "n/a"
    std = std_cell(key, s)
    return fmt_metric(key, s.mean) + (f" {std}" if std else "")


def top_sink_positions(summary: EvalSummary, n: int) -> list:
    """The n positions most often the top sink, most frequent first: [(position, share)]."""
    return sorted(summary.top_sink_positions.items(), key=lambda kv: -kv[1])[:n]


def _table(metrics: dict[str, MetricStats], indent: str = "") -> list[str]:
    out = [f"{indent}{'metric':<28}{'mean':>9}{'± std':>10}{'min':>9}{'max':>9}"]
    for k, label in METRICS.items():
        s = metrics[k]
        std = std_cell(k, s)
        out.append(
            f"{indent}{label:<28}{fmt_metric(k, s.mean):>9}{std:>10}{fmt_metric(k, s.min):>9}{fmt_metric(k, s.max):>9}"
        )
    return out


def render_summary(summary: EvalSummary, per_category: bool = True) -> str:
    """The terminal summary of an eval run: the metrics table, spike channels, top sink positions, the
    length/sink-mass correlation and, with several categories, a per-category table."""
    model = summary.model_name or "?"
    suite = summary.suite_source or "?"
    chat = chat_label(summary.chat)
    lines = [f"Eval  {model}  on {plural(summary.n_prompts, 'prompt')} ({suite}, {chat})"]
    lines += _table(summary.metrics)
    ch = summary.spike_channels
    if ch.prompts_with_spikes:
        share = ch.same_set_share
        lines.append(
            f"spike channels  {ch.most_common_set} in {share:.0%} of the {ch.prompts_with_spikes} prompts "
            f"with spikes ({plural(ch.distinct_sets, 'distinct set')})"
        )
        lines.append(
            "  " + ", ".join(f"{c.channel}: {c.frequency:.0%} (mean {c.mean_value:+.0f})" for c in ch.channels[:8])
        )
    else:
        lines.append("spike channels  none (no prompt has a spike token)")
    tops = ", ".join(f"pos {p}: {s:.0%}" for p, s in top_sink_positions(summary, 4))
    lines.append(f"top sink position  {tops}")
    r = summary.length_vs_sink_mass_r
    lines.append(f"Pearson r(sequence length, sink mass) = {'n/a' if r is None else f'{r:+.2f}'}")
    if per_category and len(summary.per_category) > 1:
        lines.append("per category (mean ± std)")
        lines.append(f"  {'category':<14}{'n':>4}" + "".join(f"{k:>20}" for k in CATEGORY_KEYS))
        for c, d in summary.per_category.items():
            cells = [mean_std(k, d.metrics[k]) for k in CATEGORY_KEYS]
            lines.append(f"  {c:<14}{d.n_prompts:>4}" + "".join(f"{x:>20}" for x in cells))
    return "\n".join(lines)
