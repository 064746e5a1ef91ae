"""PNG figures of an eval run (matplotlib, Agg backend: no display needed) and the HTML summary page.

Figures (written into the run directory):
    distributions.png       histograms of spike score, sink mass, sink rate, spike tokens per prompt
    length_vs_sink_mass.png sequence length against the top sink's attention mass, with Pearson r
    positions.png           where spike tokens and sink tokens sit (token position, all prompts)
    categories.png          per-category mean (± std) of spike score and sink mass
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

FIGURES = ("distributions.png", "length_vs_sink_mass.png", "positions.png", "categories.png")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    import io

    from sinkhole.io import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, dpi=90, format="png")
    write_atomic(path, buf.getvalue())


def write_figures(rows: list[dict], summary: dict, out_dir: str | Path) -> list[Path]:
    plt = _plt()
    out = Path(out_dir)
    paths = [out / name for name in FIGURES]
    try:
        fig, axes = plt.subplots(2, 2, figsize=(9, 6))
        for ax, key, label in [
            (axes[0, 0], "spike_score", "top spike score (x median)"),
            (axes[0, 1], "sink_mass", "top sink attention mass"),
            (axes[1, 0], "sink_rate", "top sink rate (share of heads)"),
            (axes[1, 1], "n_spikes", "spike tokens per prompt"),
        ]:
            ax.hist([r[key] for r in rows], bins=30, color="#4c72b0")
            ax.set_xlabel(label)
            ax.set_ylabel("prompts")
        fig.suptitle(f"{len(rows)} prompts")
        fig.tight_layout()
        _save(fig, paths[0])
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter([r["n_tokens"] for r in rows], [r["sink_mass"] for r in rows], s=8, alpha=0.6)
        r = summary["length_vs_sink_mass_r"]
        ax.set_title(f"Pearson r = {'n/a' if r is None else f'{r:+.2f}'}")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("top sink attention mass")
        fig.tight_layout()
        _save(fig, paths[1])
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 4))
        spikes = [s["position"] for r in rows for s in r["spikes"]]
        sinks = [s["position"] for r in rows for s in r["sinks"]]
        top = max(spikes + sinks + [1])
        bins = list(range(0, min(top, 64) + 2)) if top < 64 else 40
        ax.hist([spikes, sinks], bins=bins, label=["spike tokens", "sink tokens"], color=["#dd8452", "#4c72b0"])
        ax.set_xlabel("token position")
        ax.set_ylabel("tokens (all prompts)")
        ax.legend()
        fig.tight_layout()
        _save(fig, paths[2])
        plt.close(fig)

        cats = list(summary["per_category"])
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, label in [(axes[0], "spike_score", "top spike score"), (axes[1], "sink_mass", "sink attention mass")]:
            st = [summary["per_category"][c]["metrics"][key] for c in cats]
            ax.bar(range(len(cats)), [s["mean"] or 0 for s in st], yerr=[s["std"] or 0 for s in st], color="#55a868")
            ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right")
            ax.set_ylabel(label)
        fig.tight_layout()
        _save(fig, paths[3])
        plt.close(fig)
    finally:
        plt.close("all")
    return paths


def write_html(summary: dict, table: str, out_dir: str | Path) -> Path:
    """summary.html: the printed table and the PNG figures, embedded (one self-contained file)."""
    from sinkhole.io import write_atomic

    out = Path(out_dir)
    imgs = []
    for name in FIGURES:
        p = out / name
        if p.is_file():
            data = base64.b64encode(p.read_bytes()).decode()
            imgs.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}"><figcaption>{name}</figcaption></figure>')
    model = html.escape(str(summary.get("run", {}).get("model", {}).get("name", "")))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sinkhole eval: {model}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}pre{{background:#f4f4f4;padding:1em;overflow-x:auto}}
figure{{display:inline-block;margin:0.5em}}img{{max-width:100%}}</style></head>
<body><h1>sinkhole eval: {model}</h1>
<pre>{html.escape(table)}</pre>
{''.join(imgs)}
</body></html>
"""
    path = out / "summary.html"
    write_atomic(path, page)
    return path
