"""PNG figures of an eval run (matplotlib through sinkhole.render.png); eval_page embeds them in summary.html.

Figures (written into the run directory):
    distributions.png       histograms of spike score, sink mass, sink rate, spike tokens per prompt
    length_vs_sink_mass.png sequence length against the top sink's attention mass, with Pearson r
    positions.png           where spike tokens and sink tokens sit (token position, all prompts)
    categories.png          per-category mean (± std) of spike score and sink mass
"""

from __future__ import annotations

from pathlib import Path

from sinkhole.render.png import percent_axis, pyplot, save_png, style_axes
from sinkhole.results.eval import EvalRow, EvalSummary

FIGURES = ("distributions.png", "length_vs_sink_mass.png", "positions.png", "categories.png")


def position_counts(positions: list[int], top: int) -> list[int]:
    """How many tokens sit at each integer position 0..top (what positions.png draws)."""
    counts = [0] * (top + 1)
    for p in positions:
        counts[p] += 1
    return counts


def write_figures(rows: list[EvalRow], summary: EvalSummary, out_dir: str | Path) -> list[Path]:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    out = Path(out_dir)
    paths = [out / name for name in FIGURES]
    blue, orange, green = "#4c72b0", "#dd8452", "#55a868"
    try:
        fig, axes = plt.subplots(2, 2, figsize=(9, 6))
        for ax, key, label, percent in [
            (axes[0, 0], "spike_score", "top spike score (× median)", False),
            (axes[0, 1], "sink_mass", "top sink's attention mass", True),
            (axes[1, 0], "sink_rate", "top sink's sink rate (share of heads)", True),
            (axes[1, 1], "n_spikes", "spike tokens per prompt", False),
        ]:
            vals = [getattr(r, key) for r in rows if getattr(r, key) is not None]
            if key == "n_spikes":  # counts: one bar per integer
                top = max(vals + [1])
                ax.bar(range(top + 1), position_counts(vals, top), width=0.8, color=blue)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            else:
                ax.hist(vals, bins=30, color=blue)
                ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # room for labels such as "55.0%"
            if percent:
                percent_axis(ax)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # prompts are counted in whole numbers
            ax.set_xlabel(label)
            ax.set_ylabel("prompts")
            style_axes(ax)
        fig.suptitle(f"{len(rows)} prompts: distributions over prompts", fontsize=11)
        fig.tight_layout()
        save_png(fig, paths[0])
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 4))
        cats = sorted({r.category for r in rows})
        for i, c in enumerate(cats):
            sub = [r for r in rows if r.category == c]
            ax.scatter(
                [r.n_tokens for r in sub],
                [r.sink_mass for r in sub],
                s=10,
                alpha=0.7,
                label=c,
                color=plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")(i),
            )
        r = summary.length_vs_sink_mass_r
        style_axes(ax, f"sink mass falls with length: Pearson r = {'n/a' if r is None else f'{r:+.2f}'}")
        percent_axis(ax, "y")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("top sink's attention mass")
        if 1 < len(cats) <= 12:
            ax.legend(fontsize=7, frameon=False, ncol=2, loc="upper right")
        fig.tight_layout()
        save_png(fig, paths[1])
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 4))
        spikes = [s.position for r in rows for s in r.spikes]
        sinks = [s.position for r in rows for s in r.sinks]
        top = max(spikes + sinks + [0])
        if top < 64:  # integer positions as bars centred on integers, side by side
            x = list(range(top + 1))
            ax.bar([p - 0.2 for p in x], position_counts(spikes, top), width=0.4, label="spike tokens", color=orange)
            ax.bar([p + 0.2 for p in x], position_counts(sinks, top), width=0.4, label="sink tokens", color=blue)
            right = max(top, 9)  # room for the legend beside position 0, where most sit
            ax.set_xlim(-0.7, right + 0.7)
            ax.set_xticks(range(0, right + 1, max(1, -(-(right + 1) // 16))))  # integer ticks only
        else:
            ax.hist([spikes, sinks], bins=40, label=["spike tokens", "sink tokens"], color=[orange, blue])
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("token position")
        ax.set_ylabel("tokens (all prompts)")
        style_axes(ax, "where spike and sink tokens sit")
        ax.legend(frameon=False)
        fig.tight_layout()
        save_png(fig, paths[2])
        plt.close(fig)

        cats = list(summary.per_category)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, label, percent in [
            (axes[0], "spike_score", "top spike score (× median)", False),
            (axes[1], "sink_mass", "top sink's attention mass", True),
        ]:
            st = [summary.per_category[c].metrics[key] for c in cats]
            ax.bar(
                range(len(cats)),
                [s.mean or 0 for s in st],
                yerr=[s.std or 0 for s in st],
                color=green,
                capsize=3,
                error_kw={"elinewidth": 0.8},
            )
            ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right")
            ax.set_ylabel(label)
            if percent:
                percent_axis(ax, "y")
            style_axes(ax, "mean ± std per category")
        fig.tight_layout()
        save_png(fig, paths[3])
        plt.close(fig)
    finally:
        plt.close("all")
    return paths
