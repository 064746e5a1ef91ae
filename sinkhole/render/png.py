"""PNG figures: the one matplotlib set-up and writer that every figure renderer uses
(eval_figures, lab_figures, stream_figures).

matplotlib runs on the Agg backend, so no display is needed; a figure becomes PNG bytes in memory
and reaches the disk through `sinkhole.io`'s atomic writer, so a reader never sees half a PNG.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: int = 90) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    return buf.getvalue()


def save_png(fig, path: Path, dpi: int = 90) -> None:
    """Write `fig` as a PNG, atomically."""
    from sinkhole.io import write_atomic

    write_atomic(path, png_bytes(fig, dpi))


def style_axes(ax, title: str | None = None) -> None:
    """The house style: light horizontal grid behind the data, no top/right spines, a small left title."""
    ax.grid(True, axis="y", color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10, loc="left")


def percent_axis(ax, axis: str = "x") -> None:
    """Tick labels of shares (0..1) as percentages, with as many decimals as the axis range needs
    (whole percentages over a span of 59.1%-60.1% labelled five ticks 59%, 59%, 60%, 60%, 60%)."""
    from matplotlib.ticker import PercentFormatter

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_formatter(PercentFormatter(1.0, decimals=None))


def embedded(out_dir: str | Path, names) -> list[tuple[str, str]]:
    """(name, data URI) of each PNG of `names` present in out_dir, in order: pages carry their figures
    inside them, so they open offline and survive being mailed alone."""
    out = []
    for name in names:
        p = Path(out_dir) / name
        if p.is_file():
            out.append((name, "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()))
    return out
