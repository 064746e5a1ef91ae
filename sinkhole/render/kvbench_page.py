"""kv-bench's page: one self-contained HTML file (figures embedded as PNG data URIs, opens offline).

Figures, in reading order:
- accuracy against the KV bytes held: one point per method and context length, the mean over the
  retrieval tasks (passkey / niah / multikey). Colour names the method and marker shape the length, in
  legends beside the axes, so no per-point label can land on another; points that would hide each
  other (several methods at 100%, or at the same bytes) are set side by side; a hollow marker is a
  length where not every retrieval task counts (not run, or dense failed every sample: its mean is
  over fewer tasks).
- the NIAH grid (length x depth heat map of accuracy) per method, the random-head controls pooled over
  their seeds, below the plot as small multiples: every map is drawn at one size that keeps each cell's
  number readable, and the page carries the grid three, two and one map across (a <picture> whose
  sources the browser picks by window width), so a narrow window wraps the maps to more rows instead of
  shrinking them; all maps share one set of lengths and depths, so a cell sits in the same place in each.
Tables: the terminal's, as text."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path

from sinkhole.render.png import png_bytes, pyplot, style_axes
from sinkhole.results.kvbench import RETRIEVAL, Cell, KVBenchResult, skipped_cells

# PNGs are drawn at HIDPI x the size the page shows them (sharp on high-density screens); at DPI
# points per inch a font of f points is f * DPI / 72 CSS px tall where shown.
DPI, HIDPI = 90, 2
CELL_FONT = 10  # points (12.5 px): the NIAH cells' numbers, the maps' reason to be read
MARKERS = "os^DvPX*"  # one per context length, in order
DODGE = 0.025  # share of the x axis's width between side-by-side points (a marker's width)
NEAR_Y = 0.04  # points closer than this in accuracy (and than DODGE across) would cover each other
PAGE_MAX = 1200  # CSS px: the widest the page's body gets (eval.css), so the most maps a row can hold
PAGE_EDGE = 48  # CSS px of a window that the body's padding and a scroll bar take
NIAH_COLUMNS = (3, 2, 1)  # the layouts the page carries, widest first


def _group(method: str) -> str:
    return "random" if method.startswith("random:") else method


@dataclass
class NiahGrid:
    """One method's NIAH map: acc[depth][length] is the mean score (None: not run)."""

    lengths: list[int]
    depths: list[float]
    acc: list[list[float | None]]


def niah_grids(cells: list[Cell]) -> dict[str, NiahGrid]:
    """method (random seeds pooled) -> its grid, every grid over all the lengths and depths that ran."""
    by: dict[str, dict] = {}
    for c in cells:
        if c.task != "niah":
            continue
        g = by.setdefault(_group(c.method), {})
        for s in c.samples:
            g.setdefault((c.length, s.depth), []).append(s.score)
    lengths = sorted({n for g in by.values() for n, _ in g})
    depths = sorted({d for g in by.values() for _, d in g})
    return {
        m: NiahGrid(
            lengths, depths, [[sum(g[n, d]) / len(g[n, d]) if (n, d) in g else None for n in lengths] for d in depths]
        )
        for m, g in by.items()
    }


def _draw_map(ax, method: str, g: NiahGrid) -> None:
    """One heat map: green is found, red missed; each cell's percentage written on it (white on the
    dark ends of the scale), '-' where that length and depth did not run for this method."""
    data = [[math.nan if v is None else v for v in row] for row in g.acc]
    ax.imshow(data, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
    ax.set_facecolor("#eef0f3")
    ax.set_xticks(range(len(g.lengths)), [str(x) for x in g.lengths], fontsize=9)
    ax.set_yticks(range(len(g.depths)), [f"{d:.0%}" for d in g.depths], fontsize=9)
    ax.tick_params(length=0)
    for i, row in enumerate(g.acc):
        for j, v in enumerate(row):
            text, colour = ("-", "#5b6475") if v is None else (f"{v:.0%}", "white" if v < 0.2 or v > 0.8 else "black")
            ax.text(j, i, text, ha="center", va="center", fontsize=CELL_FONT, color=colour)
    ax.set_title(method, fontsize=11, loc="left")
    ax.set_xlabel("context tokens", fontsize=9)
    ax.set_ylabel("needle depth", fontsize=9)


def _map_size(g: NiahGrid) -> tuple[float, float]:
    """Inches for one map: room for each cell's number plus the axis labels."""
    return 1.3 + 0.9 * max(len(g.lengths), 3), 1.0 + 0.4 * max(len(g.depths), 3)


def niah_figure(grids: dict[str, NiahGrid], cols: int = 3):
    """Every method's map, `cols` across, as a matplotlib figure (None without NIAH cells); each map
    is _map_size whatever the number of columns."""
    if not grids:
        return None
    n = len(grids)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    w, h = _map_size(next(iter(grids.values())))
    fig, axes = pyplot().subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (m, g) in zip(axes.flat, grids.items()):
        _draw_map(ax, m, g)
    return fig


@dataclass
class RetrievalPoint:
    """One method at one length: the KV bytes it held (MiB per sequence, the largest over its cells), its
    mean retrieval accuracy, and the retrieval tasks that mean is over."""

    mib: float
    accuracy: float
    length: int
    tasks: tuple[str, ...]


def retrieval_points(cells: list[Cell]) -> dict[str, list[RetrievalPoint]]:
    """method -> its points in order of length, random seeds pooled. A (task, length) kv-bench skipped
    (dense failed every sample, so the other methods did not run) is left out for every method, dense
    included, so dense's point and a method's average the same tasks."""
    acc: dict[tuple[str, int], list[float]] = {}
    mem: dict[tuple[str, int], list[int]] = {}
    tasks: dict[tuple[str, int], set[str]] = {}
    nothing = set(skipped_cells(cells, sorted({c.method for c in cells})))
    for c in cells:
        if c.task in RETRIEVAL and c.key[:2] not in nothing:
            k = (_group(c.method), c.length)
            acc.setdefault(k, []).append(c.score)
            mem.setdefault(k, []).append(c.kv_bytes)
            tasks.setdefault(k, set()).add(c.task)
    out: dict[str, list[RetrievalPoint]] = {}
    for (m, n), v in sorted(acc.items(), key=lambda kv: kv[0][1]):
        ran = tuple(t for t in RETRIEVAL if t in tasks[m, n])
        out.setdefault(m, []).append(RetrievalPoint(max(mem[m, n]) / 2**20, sum(v) / len(v), n, ran))
    return out


def dodge(points: dict[str, list[RetrievalPoint]], step: float) -> dict[str, list[float]]:
    """method -> each point's x shift in log10 units: points of different methods nearer than `step`
    across and NEAR_Y up (which would cover each other) are spread side by side, `step` apart,
    centred on where they were; every other point stays put."""
    flat = [(m, i, math.log10(p.mib), p.accuracy) for m, pts in points.items() for i, p in enumerate(pts)]
    parent = list(range(len(flat)))

    def root(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    for a in range(len(flat)):
        for b in range(a + 1, len(flat)):
            if abs(flat[a][2] - flat[b][2]) < step and abs(flat[a][3] - flat[b][3]) < NEAR_Y:
                parent[root(b)] = root(a)
    shift = {m: [0.0] * len(pts) for m, pts in points.items()}
    clusters: dict[int, list[int]] = {}
    for a in range(len(flat)):
        clusters.setdefault(root(a), []).append(a)
    for members in clusters.values():
        centre = sum(flat[a][2] for a in members) / len(members)
        for k, a in enumerate(members):  # in method order, so a method keeps its side across lengths
            m, i, x, _ = flat[a]
            shift[m][i] = centre + (k - (len(members) - 1) / 2) * step - x if len(members) > 1 else 0.0
    return shift


def accuracy_figure(points: dict[str, list[RetrievalPoint]]):
    """Accuracy against KV bytes as a matplotlib figure (None without retrieval cells)."""
    if not points:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9.6, 4.8), layout="constrained")
    xs = [p.mib for pts in points.values() for p in pts]
    lo, hi = math.log10(min(xs)), math.log10(max(xs))
    span = max(hi - lo, 0.3) * 1.15  # the axis's width in decades, with its margins
    shift = dodge(points, DODGE * span)
    lengths = sorted({p.length for pts in points.values() for p in pts})
    marker = {n: MARKERS[i % len(MARKERS)] for i, n in enumerate(lengths)}
    partial = False
    for k, (m, pts) in enumerate(points.items()):
        colour = "black" if m == "dense" else f"C{k}"
        x = [10 ** (math.log10(p.mib) + s) for p, s in zip(pts, shift[m])]
        y = [p.accuracy for p in pts]
        ax.plot(x, y, color=colour, linewidth=1.4, alpha=0.8, zorder=2, label=m)
        for xi, p in zip(x, pts):
            hollow = len(p.tasks) < len(RETRIEVAL)
            partial |= hollow
            face = "white" if hollow else colour
            ax.plot([xi], [p.accuracy], marker=marker[p.length], markersize=7, color=colour, mfc=face, zorder=3)
    ax.set_xscale("log")
    ax.set_xlim(10 ** (lo - 0.075 * span), 10 ** (hi + 0.075 * span))
    # labelled ticks at 1-2-5 steps as plain numbers; matplotlib's default labels the minor ticks as
    # '3x10^1', '4x10^1', which ran into each other
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("KV bytes held per sequence (MiB, log scale)")
    ax.set_ylabel("mean accuracy")
    ax.set_ylim(-0.04, 1.04)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
    style_axes(ax, f"retrieval accuracy ({', '.join(RETRIEVAL)}) vs KV bytes")
    methods = ax.legend(title="method", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    ax.add_artist(methods)
    shapes = [Line2D([], [], linestyle="none", marker=marker[n], color="#444", markersize=7) for n in lengths]
    names = [str(n) for n in lengths]
    if partial:
        shapes.append(Line2D([], [], linestyle="none", marker="o", color="#444", mfc="white", markersize=7))
        names.append("not every\ntask counted")  # two lines: one ran past the figure's right edge
    ax.legend(shapes, names, title="context tokens", loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=9)
    ax.get_legend().set_frame_on(False)
    return fig


def _png(fig, dpi: int = DPI * HIDPI) -> bytes:
    """The figure as a palette PNG (and closed): the figures are a few flat colours and antialiased text,
    which 256 colours hold without a visible change, at about a third of the bytes (the page carries
    every figure, the maps in three layouts, at HIDPI x)."""
    import io

    from PIL import Image

    raw = png_bytes(fig, dpi)
    pyplot().close(fig)
    buf = io.BytesIO()
    Image.open(io.BytesIO(raw)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
        buf, "PNG", optimize=True
    )
    return buf.getvalue()


def _css_size(fig) -> tuple[int, int]:
    """The figure's size in CSS px where the page shows it as drawn (its PNG has HIDPI x as many pixels)."""
    w, h = fig.get_size_inches()
    return round(w * DPI), round(h * DPI)


def _uri(fig) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(fig)).decode()


def _img(fig, alt: str) -> str:
    """An <img> of the figure, its width and height the size it was drawn for, so the page shows it at
    that size and shrinks it only on a narrower window."""
    w, h = _css_size(fig)
    return f'<img alt="{html.escape(alt)}" width="{w}" height="{h}" src="{_uri(fig)}">'


def _niah_picture(grids: dict[str, NiahGrid]) -> str:
    """The maps as a <picture>: one source per layout of NIAH_COLUMNS that fits the page, each shown from
    the narrowest window that holds it unshrunk (media query), and one map across as the <img> for any
    narrower window. Each source's width and height are its CSS size; data-cols says how many across."""
    sources, img = [], ""
    for cols in sorted({min(c, len(grids)) for c in NIAH_COLUMNS}, reverse=True):
        fig = niah_figure(grids, cols)
        w, h = _css_size(fig)
        if cols == 1:
            img = f'<img alt="NIAH maps" width="{w}" height="{h}" data-cols="1" src="{_uri(fig)}">'
        elif w <= PAGE_MAX:
            sources.append(
                f'<source media="(min-width: {w + PAGE_EDGE}px)" width="{w}" height="{h}" data-cols="{cols}" '
                f'srcset="{_uri(fig)} {HIDPI}x">'
            )
        else:
            pyplot().close(fig)
    return f"<picture>{''.join(sources)}{img}</picture>"


def render_page(result: KVBenchResult, table: str) -> str:
    from sinkhole.render import static

    parts = []
    fig = accuracy_figure(retrieval_points(result.cells))
    if fig is not None:
        cap = (
            "Mean accuracy over passkey, NIAH and multi-key against the KV bytes each cache held at the end, "
            "one point per method and context length (colour: method, shape: length; hollow: a length where "
            "not every retrieval task counts: not run, or skipped where dense failed every sample). Points that would "
            "cover each other are set side by side, shifted along the bytes axis by a marker's width or two; "
            "the tables below have the exact values."
        )
        parts.append(
            f'<figure class="accuracy">{_img(fig, "accuracy vs KV bytes")}'
            f"<figcaption>{html.escape(cap)}</figcaption></figure>"
        )
    grids = niah_grids(result.cells)
    if grids:
        cap = (
            "Accuracy per context length and needle depth (0%: the needle opens the haystack), one map per "
            "method; random: the random-head controls pooled over their seeds."
        )
        parts.append(
            f'<h2>Needle in a haystack</h2><figure class="niah">{_niah_picture(grids)}'
            f"<figcaption>{html.escape(cap)}</figcaption></figure>"
        )
    model = html.escape(str(result.model.name))
    css = static.read("eval.css").rstrip("\n")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sinkhole kv-bench: {model}</title>
<style>{css}</style></head>
<body><h1>sinkhole kv-bench: {model}</h1>
{"".join(parts)}
<h2>Results</h2><pre>{html.escape(table)}</pre>
</body></html>
"""


def write_page(result: KVBenchResult, path: str | Path) -> None:
    from sinkhole.io import write_output
    from sinkhole.render.kvbench_text import render_kvbench

    write_output(path, render_page(result, render_kvbench(result)), "kv-bench page")


def write_figures(result: KVBenchResult, out_dir: str | Path) -> list[Path]:
    """The page's figures as PNG files (niah.png: every method's map, accuracy.png) in out_dir, for docs."""
    from sinkhole.io import write_atomic

    out = []
    for name, fig in (
        ("niah.png", niah_figure(niah_grids(result.cells))),
        ("accuracy.png", accuracy_figure(retrieval_points(result.cells))),
    ):
        if fig is not None:
            path = Path(out_dir) / name
            write_atomic(path, _png(fig, DPI))
            out.append(path)
    return out
