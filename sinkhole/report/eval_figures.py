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


def _style(ax, title: str | None = None) -> None:
    ax.grid(True, axis="y", color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10, loc="left")


def _percent(ax, axis: str = "x") -> None:
    from matplotlib.ticker import PercentFormatter

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_formatter(PercentFormatter(1.0, decimals=0))


def position_counts(positions: list[int], top: int) -> list[int]:
    """How many tokens sit at each integer position 0..top (what positions.png draws)."""
    counts = [0] * (top + 1)
    for p in positions:
        counts[p] += 1
    return counts


def write_figures(rows: list[dict], summary: dict, out_dir: str | Path) -> list[Path]:
    plt = _plt()
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
            vals = [r[key] for r in rows if r.get(key) is not None]
            if key == "n_spikes":  # counts: one bar per integer
                top = max(vals + [1])
                ax.bar(range(top + 1), position_counts(vals, top), width=0.8, color=blue)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            else:
                ax.hist(vals, bins=30, color=blue)
            if percent:
                _percent(ax)
            ax.set_xlabel(label)
            ax.set_ylabel("prompts")
            _style(ax)
        fig.suptitle(f"{len(rows)} prompts: distributions over prompts", fontsize=11)
        fig.tight_layout()
        _save(fig, paths[0])
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 4))
        cats = sorted({r["category"] for r in rows})
        for i, c in enumerate(cats):
            sub = [r for r in rows if r["category"] == c]
            ax.scatter(
                [r["n_tokens"] for r in sub],
                [r["sink_mass"] for r in sub],
                s=10,
                alpha=0.7,
                label=c,
                color=plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")(i),
            )
        r = summary["length_vs_sink_mass_r"]
        _style(ax, f"sink mass falls with length: Pearson r = {'n/a' if r is None else f'{r:+.2f}'}")
        _percent(ax, "y")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("top sink's attention mass")
        if 1 < len(cats) <= 12:
            ax.legend(fontsize=7, frameon=False, ncol=2, loc="upper right")
        fig.tight_layout()
        _save(fig, paths[1])
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 4))
        spikes = [s["position"] for r in rows for s in r["spikes"]]
        sinks = [s["position"] for r in rows for s in r["sinks"]]
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
        _style(ax, "where spike and sink tokens sit")
        ax.legend(frameon=False)
        fig.tight_layout()
        _save(fig, paths[2])
        plt.close(fig)

        cats = list(summary["per_category"])
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, label, percent in [
            (axes[0], "spike_score", "top spike score (× median)", False),
            (axes[1], "sink_mass", "top sink's attention mass", True),
        ]:
            st = [summary["per_category"][c]["metrics"][key] for c in cats]
            ax.bar(
                range(len(cats)),
                [s["mean"] or 0 for s in st],
                yerr=[s["std"] or 0 for s in st],
                color=green,
                capsize=3,
                error_kw={"elinewidth": 0.8},
            )
            ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right")
            ax.set_ylabel(label)
            if percent:
                _percent(ax, "y")
            _style(ax, "mean ± std per category")
        fig.tight_layout()
        _save(fig, paths[3])
        plt.close(fig)
    finally:
        plt.close("all")
    return paths


CAPTIONS = {
    "distributions.png": "Per-prompt numbers across the suite: a narrow peak means the structure does not depend on the prompt.",
    "length_vs_sink_mass.png": "The top sink's attention mass against prompt length (one dot per prompt, coloured by category).",
    "positions.png": "Positions of spike and sink tokens over all prompts.",
    "categories.png": "Per-category mean ± std of the spike score and the sink's attention mass.",
}


def _cells(tag: str, cells: list[str], cls: list[str] | None = None) -> str:
    cls = cls or [""] * len(cells)
    return "<tr>" + "".join(f"<{tag}{f' class={c!r}' if c else ''}>{v}</{tag}>" for v, c in zip(cells, cls)) + "</tr>"


def tables_html(summary: dict) -> str:
    """The summary as HTML tables (the same numbers and formats as the terminal table)."""
    from sinkhole.eval.aggregate import METRICS, _fmt, _fmt_std
    from sinkhole.report.terminal import pct

    esc = html.escape
    num = ["", "num", "num", "num", "num", "num"]
    rows = [_cells("th", ["metric", "mean", "± std", "min", "max", "prompts"])]
    for k, label in METRICS.items():
        s = summary["metrics"][k]
        rows.append(
            _cells(
                "td",
                [
                    esc(label),
                    _fmt(k, s["mean"]),
                    "" if s["std"] is None else "± " + _fmt_std(k, s["std"]),
                    _fmt(k, s["min"]),
                    _fmt(k, s["max"]),
                    str(s["n"]),
                ],
                num,
            )
        )
    out = [f"<table class='t'>{''.join(rows)}</table>"]
    ch = summary["spike_channels"]
    if ch["prompts_with_spikes"]:
        out.append(
            f"<p><b>Spike channels</b> {esc(str(ch['most_common_set']))} in {pct(ch['same_set_share'], 0)} of the "
            f"{ch['prompts_with_spikes']} prompts with spikes ({ch['distinct_sets']} distinct sets).</p>"
        )
        out.append(
            "<table class='t'>"
            + _cells("th", ["channel", "in prompts", "mean value"])
            + "".join(
                _cells(
                    "td",
                    [str(c["channel"]), pct(c["frequency"], 0), f"{c['mean_value']:+,.0f}"],
                    ["num", "num", "num"],
                )
                for c in ch["channels"][:12]
            )
            + "</table>"
        )
    else:
        out.append("<p><b>Spike channels</b> none (no prompt has a spike token).</p>")
    tops = sorted(summary["top_sink_positions"].items(), key=lambda kv: -kv[1])[:6]
    out.append("<p><b>Top sink position</b> " + ", ".join(f"#{esc(p)}: {pct(s, 0)}" for p, s in tops) + "</p>")
    cats = summary["per_category"]
    if len(cats) > 1:
        keys = ["spike_score", "sink_mass", "sink_rate", "n_spikes", "jaccard", "n_tokens"]
        head = ["category", "prompts"] + [esc(METRICS[k]) for k in keys]
        body = []
        for c, d in cats.items():
            cells = [esc(c), str(d["n_prompts"])]
            for k in keys:
                s = d["metrics"][k]
                cells.append("n/a" if s["mean"] is None else f"{_fmt(k, s['mean'])} ± {_fmt_std(k, s['std'])}")
            body.append(_cells("td", cells, [""] + ["num"] * (len(cells) - 1)))
        out.append(
            "<h2>Per category (mean ± std)</h2><div class='scroll'><table class='t'>"
            + _cells("th", head)
            + "".join(body)
            + "</table></div>"
        )
    return "\n".join(out)


def write_html(summary: dict, table: str, out_dir: str | Path) -> Path:
    """summary.html: the summary as tables, the PNG figures embedded (one self-contained file), and the
    terminal table (`table`) one click away."""
    from sinkhole.io import write_atomic

    out = Path(out_dir)
    imgs = []
    for name in FIGURES:
        p = out / name
        if p.is_file():
            data = base64.b64encode(p.read_bytes()).decode()
            imgs.append(
                f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
                f"<figcaption><b>{name}</b>: {html.escape(CAPTIONS.get(name, ''))}</figcaption></figure>"
            )
    run = summary.get("run", {})
    model = html.escape(str(run.get("model", {}).get("name", "")))
    suite = html.escape(str(run.get("suite", {}).get("source", "?")))
    chat = run.get("settings", {}).get("chat")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sinkhole eval: {model}</title>
<style>body{{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#1d2330}}
h1{{font-size:22px}} h2{{font-size:17px;margin-top:1.6em;border-bottom:1px solid #dde1e8}}
table.t{{border-collapse:collapse;margin:8px 0 12px;font-size:13px}}
table.t td,table.t th{{border:1px solid #dde1e8;padding:3px 8px;text-align:left;white-space:nowrap}}
table.t th{{white-space:normal;vertical-align:bottom}}
table.t th{{background:#f6f7f9}} table.t td.num{{text-align:right;font-variant-numeric:tabular-nums}}
.scroll{{overflow-x:auto}} .figs{{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:16px}}
figure{{margin:0}} img{{max-width:100%;height:auto}} figcaption{{font-size:13px;color:#5b6475}}
pre{{background:#f6f7f9;padding:1em;overflow-x:auto}}</style></head>
<body><h1>sinkhole eval: {model}</h1>
<p>{summary["n_prompts"]} prompts from {suite} · chat template {html.escape(str(chat))}</p>
{tables_html(summary)}
<h2>Figures</h2><div class="figs">{"".join(imgs)}</div>
<details><summary>terminal summary</summary><pre>{html.escape(table)}</pre></details>
</body></html>
"""
    path = out / "summary.html"
    write_atomic(path, page)
    return path
