"""The PNG of `sinkhole stream --plot`: perplexity against position in the stream, one line per method
(`sinkhole.cache.stream_eval.StreamResult.to_dict()`), through sinkhole.report.png."""

from __future__ import annotations

import math

from sinkhole.report.png import png_bytes, pyplot


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
# exactly on top of it; dashes and markers keep both visible.
PLOT_STYLES = {
    "dense": dict(color="tab:green", linestyle="-", linewidth=2.2),
    "window": dict(color="tab:red", linestyle="-"),
    "sinks": dict(color="tab:blue", linestyle="-", linewidth=3.0, alpha=0.6),
    "profile": dict(color="tab:orange", linestyle="--", marker="x", markersize=4, markevery=3),
    "recompute": dict(color="black", linestyle="none", marker="o", markersize=4),
}


def plot_stream(result: dict, path, width: int = 32) -> None:
    """PNG of perplexity against position (bins of `width` tokens), recompute samples as dots."""
    from sinkhole.io import write_output

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, m in result["methods"].items():
        w = width
        if name == "recompute":  # sampled positions: widen the bins so each holds several samples
            gaps = [b - a for a, b in zip(result["sample_positions"], result["sample_positions"][1:])]
            w = max(width, 8 * (max(gaps) if gaps else 1))
        xs, ys = binned_ppl(m["nll"], w)
        if xs:
            label = m["label"] + (f" {m['sink_positions']}" if name == "profile" else "")
            if name == "recompute":
                # A sample of positions, a few per bin: its bin means are noisy, so show them as
                # points rather than a line whose jumps would read as a trend.
                label += f" (mean of samples, bins of {w})"
            ax.plot(xs, ys, label=label, **PLOT_STYLES.get(name, {}))
    ax.axvline(result["cache_size"], color="grey", linestyle=":", label="cache full")
    ax.set_yscale("log")
    ax.set_xlabel("position in stream (tokens)")
    ax.set_ylabel(f"perplexity (bins of {width} tokens)")
    ax.set_title(f"{result['model']}: streaming perplexity, cache {result['cache_size']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    data = png_bytes(fig, dpi=110)
    plt.close(fig)
    write_output(path, data, "plot")  # a path the user named: '-' is stdout, a failed write leaves a rescue copy
