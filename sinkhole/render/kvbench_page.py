"""kv-bench's page: one self-contained HTML file (figures embedded as PNG data URIs, opens offline).

Figures: the NIAH grid per method (length x depth heat map of accuracy; the random-head controls
pooled over their seeds) and accuracy against the KV bytes held (one point per method and length:
the mean over the retrieval tasks passkey / niah / multikey). Tables: the terminal's, as text."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from sinkhole.render.png import png_bytes, pyplot, style_axes
from sinkhole.results.kvbench import RETRIEVAL, Cell, KVBenchResult


def _group(method: str) -> str:
    return "random" if method.startswith("random:") else method


def niah_grids(cells: list[Cell]) -> dict[str, dict]:
    """method (random seeds pooled) -> {lengths, depths, acc[depth][length] (None: not run)}."""
    by: dict[str, dict] = {}
    for c in cells:
        if c.task != "niah":
            continue
        g = by.setdefault(_group(c.method), {})
        for s in c.samples:
            g.setdefault((c.length, s.depth), []).append(s.score)
    out = {}
    for m, g in by.items():
        lengths = sorted({k[0] for k in g})
        depths = sorted({k[1] for k in g})
        acc = [[(sum(g[(n, d)]) / len(g[(n, d)])) if (n, d) in g else None for n in lengths] for d in depths]
        out[m] = dict(lengths=lengths, depths=depths, acc=acc)
    return out


def niah_figure(grids: dict[str, dict]) -> bytes | None:
    if not grids:
        return None
    plt = pyplot()
    n = len(grids)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (m, g) in zip(axes.flat, grids.items()):
        data = [[float("nan") if v is None else v for v in row] for row in g["acc"]]
        ax.imshow(data, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        ax.set_xticks(range(len(g["lengths"])), [str(x) for x in g["lengths"]], fontsize=8)
        ax.set_yticks(range(len(g["depths"])), [f"{d:.0%}" for d in g["depths"]], fontsize=8)
        for i, row in enumerate(data):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=7)
        ax.set_title(m, fontsize=9, loc="left")
        ax.set_xlabel("tokens", fontsize=8)
        ax.set_ylabel("needle depth", fontsize=8)
    fig.tight_layout()
    out = png_bytes(fig)
    plt.close(fig)
    return out


def retrieval_points(cells: list[Cell]) -> dict[str, list[tuple[float, float, int]]]:
    """method -> [(KV MiB per sequence, mean retrieval accuracy, length)] per length, random pooled."""
    acc: dict[tuple[str, int], list[float]] = {}
    mem: dict[tuple[str, int], list[int]] = {}
    for c in cells:
        if c.task in RETRIEVAL:
            k = (_group(c.method), c.length)
            acc.setdefault(k, []).append(c.score)
            mem.setdefault(k, []).append(c.kv_bytes)
    out: dict[str, list] = {}
    for (m, n), v in sorted(acc.items(), key=lambda kv: kv[0][1]):
        out.setdefault(m, []).append((max(mem[(m, n)]) / 2**20, sum(v) / len(v), n))
    return out


def accuracy_figure(points: dict[str, list]) -> bytes | None:
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m, pts in points.items():
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, marker="o", label=m)
        for x, y, n in pts:
            ax.annotate(str(n), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("KV bytes held per sequence (MiB, log)")
    ax.set_ylabel(f"accuracy ({', '.join(RETRIEVAL)})")
    ax.set_ylim(-0.03, 1.03)
    style_axes(ax, "accuracy vs KV bytes (labels: context tokens)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = png_bytes(fig)
    plt.close(fig)
    return out


def render_page(result: KVBenchResult, table: str) -> str:
    from sinkhole.render import static

    figs = []
    for name, png, caption in (
        ("niah", niah_figure(niah_grids(result.cells)), "NIAH: accuracy per context length and needle depth."),
        (
            "accuracy",
            accuracy_figure(retrieval_points(result.cells)),
            "Mean accuracy over passkey, NIAH and multi-key against the KV bytes each cache held at the end.",
        ),
    ):
        if png:
            uri = "data:image/png;base64," + base64.b64encode(png).decode()
            figs.append(
                f'<figure><img alt="{name}" src="{uri}"><figcaption>{html.escape(caption)}</figcaption></figure>'
            )
    model = html.escape(str(result.model.name))
    css = static.read("eval.css").rstrip("\n")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sinkhole kv-bench: {model}</title>
<style>{css}</style></head>
<body><h1>sinkhole kv-bench: {model}</h1>
<div class="figs">{"".join(figs)}</div>
<h2>Results</h2><pre>{html.escape(table)}</pre>
</body></html>
"""


def write_page(result: KVBenchResult, path: str | Path) -> None:
    from sinkhole.io import write_output
    from sinkhole.render.kvbench_text import render_kvbench

    write_output(path, render_page(result, render_kvbench(result)), "kv-bench page")


def write_figures(result: KVBenchResult, out_dir: str | Path) -> list[Path]:
    """The page's figures as PNG files (niah.png, accuracy.png) in out_dir, for docs."""
    from sinkhole.io import write_atomic

    out = []
    for name, png in (
        ("niah.png", niah_figure(niah_grids(result.cells))),
        ("accuracy.png", accuracy_figure(retrieval_points(result.cells))),
    ):
        if png:
            path = Path(out_dir) / name
            write_atomic(path, png)
            out.append(path)
    return out
