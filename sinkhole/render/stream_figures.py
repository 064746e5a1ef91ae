"""The PNG of `sinkhole stream --plot`: perplexity against position in the stream, one line per method
(`sinkhole.results.stream.StreamResult`), through sinkhole.render.png."""

from __future__ import annotations

import math

from sinkhole.render.png import png_bytes, pyplot
from sinkhole.results.stream import StreamResult


def binned_ppl(nll: list[float | None], width: int) -> tuple[list[float], list[float]]:
    """Perplexity in consecutive bins of `width` positions, placed at the mean scored position of
    each bin (nll[i] scores token i+1); bins with nothing scored are left out."""
    centres, vals = [], []
    for s in range(0, len(nll), width):
        scored = [(i + 1, v) for i, v in enumerate(nll[s : s + width], start=s) if v is not None]
        if scored:
            centres.append(sum(j for j, _ in scored) / len(scored))
            vals.append(math.exp(sum(v for _, v in scored) / len(scored)))
    return centres, vals


# Distinct line styles and markers: "profile" often pins the same slots as "sinks" and then draws
# exactly on top of it, so "sinks" is a wide translucent band underneath and "profile" a thin dashed line
# on it: where they coincide both stay visible (and the legend says they coincide).
PLOT_STYLES = {
    "dense": dict(color="tab:green", linestyle="-", linewidth=2.0, zorder=3),
    "window": dict(color="tab:red", linestyle="-", linewidth=1.5, zorder=3),
    "sinks": dict(color="tab:blue", linestyle="-", linewidth=7.0, alpha=0.3, solid_capstyle="round", zorder=2),
    "profile": dict(
        color="tab:orange", linestyle="--", linewidth=1.6, marker="x", markersize=5, markevery=2, zorder=4
    ),
    "recompute": dict(color="black", linestyle="none", marker="o", markersize=4, zorder=5),
}
SAME = 0.02  # curves within 2% of each other at every bin are named as coinciding in the legend


def _coincides(a: list[float], b: list[float]) -> float | None:
    """The largest relative gap between two binned curves of the same bins, or None when they differ by
    more than SAME somewhere (or are not on the same bins)."""
    if len(a) != len(b) or not a:
        return None
    gap = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))
    return gap if gap <= SAME else None


def stream_figure(result: StreamResult, width: int = 32):
    """The matplotlib figure of perplexity against position (bins of `width` tokens), recompute samples
    as dots. The legend sits below the axes, never over the lines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    curves, widths = {}, {}
    for name, m in result.methods.items():
        w = width
        if name == "recompute":  # sampled positions: widen the bins so each holds several samples
            gaps = [b - a for a, b in zip(result.sample_positions, result.sample_positions[1:])]
            w = max(width, 8 * (max(gaps) if gaps else 1))
        curves[name], widths[name] = binned_ppl(m.nll, w), w
    for name, m in result.methods.items():
        (xs, ys), w = curves[name], widths[name]
        if xs:
            label = m.label + (f" {m.sink_positions}" if name == "profile" else "")
            if name == "recompute":
                # A sample of positions, a few per bin: its bin means are noisy, so show them as
                # points rather than a line whose jumps would read as a trend.
                label += f" (mean of samples, bins of {w})"
            if name == "profile" and "sinks" in result.methods:
                gap = _coincides(ys, curves["sinks"][1])
                if gap is not None:
                    label += f" (on top of sinks + window: within {gap:.1%})"
            ax.plot(xs, ys, label=label, **PLOT_STYLES.get(name, {}))
    ax.axvline(result.cache_size, color="grey", linestyle=":", label="cache full")
    ax.set_yscale("log")
    ax.set_xlabel("position in stream (tokens)")
    ax.set_ylabel(f"perplexity (bins of {width} tokens)")
    ax.set_title(f"{result.model}: streaming perplexity, cache {result.cache_size}")
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return fig


def plot_stream(result: StreamResult, path, width: int = 32) -> None:
    """Write the PNG of `stream_figure` to `path`."""
    from sinkhole.io import write_output

    plt = pyplot()
    fig = stream_figure(result, width)
    data = png_bytes(fig, dpi=110)
    plt.close(fig)
    write_output(path, data, "plot")  # a path the user named: '-' is stdout, a failed write leaves a rescue copy
