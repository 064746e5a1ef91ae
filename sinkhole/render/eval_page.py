"""summary.html of an eval run: the summary as tables (the numbers and formats of eval_text's terminal
table), the PNG figures of eval_figures embedded as data URIs (one self-contained file that opens
offline), and the terminal summary one click away; all from the typed rows and summary
(sinkhole.results.eval). Stylesheet: static/eval.css."""

from __future__ import annotations

import html
from pathlib import Path

from sinkhole.render import static
from sinkhole.render.analyze_text import chat_label, pct, plural
from sinkhole.render.eval_figures import FIGURES, write_figures
from sinkhole.render.eval_text import CATEGORY_KEYS, fmt_metric, mean_std, render_summary, std_cell, top_sink_positions
from sinkhole.render.png import embedded
from sinkhole.results.eval import METRICS, EvalRow, EvalSummary

CAPTIONS = {
    "distributions.png": "Per-prompt numbers across the suite: a narrow peak means the structure does not depend on "
    "the prompt.",
    "length_vs_sink_mass.png": "The top sink's attention mass against prompt length (one dot per prompt, coloured by "
    "category).",
    "positions.png": "Positions of spike and sink tokens over all prompts.",
    "categories.png": "Per-category mean ± std of the spike score and the sink's attention mass.",
}


def _cells(tag: str, cells: list[str], cls: list[str] | None = None) -> str:
    cls = cls or [""] * len(cells)
    return "<tr>" + "".join(f"<{tag}{f' class={c!r}' if c else ''}>{v}</{tag}>" for v, c in zip(cells, cls)) + "</tr>"


def tables_html(summary: EvalSummary) -> str:
    """The summary as HTML tables (the same numbers and formats as the terminal table)."""
    esc = html.escape
    num = ["", "num", "num", "num", "num", "num"]
    rows = [_cells("th", ["metric", "mean", "± std", "min", "max", "prompts"])]
    for k, label in METRICS.items():
        s = summary.metrics[k]
        rows.append(
            _cells(
                "td",
                [
                    esc(label),
                    fmt_metric(k, s.mean),
                    std_cell(k, s),
                    fmt_metric(k, s.min),
                    fmt_metric(k, s.max),
                    str(s.n),
                ],
                num,
            )
        )
    out = [f"<table class='t'>{''.join(rows)}</table>"]
    ch = summary.spike_channels
    if ch.prompts_with_spikes:
        out.append(
            f"<p><b>Spike channels</b> {esc(str(ch.most_common_set))} in {pct(ch.same_set_share, 0)} of the "
            f"{ch.prompts_with_spikes} prompts with spikes ({plural(ch.distinct_sets, 'distinct set')}).</p>"
        )
        out.append(
            "<table class='t'>"
            + _cells("th", ["channel", "in prompts", "mean value"])
            + "".join(
                _cells(
                    "td",
                    [str(c.channel), pct(c.frequency, 0), f"{c.mean_value:+,.0f}"],
                    ["num", "num", "num"],
                )
                for c in ch.channels[:12]
            )
            + "</table>"
        )
    else:
        out.append("<p><b>Spike channels</b> none (no prompt has a spike token).</p>")
    tops = top_sink_positions(summary, 6)
    out.append("<p><b>Top sink position</b> " + ", ".join(f"#{esc(p)}: {pct(s, 0)}" for p, s in tops) + "</p>")
    cats = summary.per_category
    if len(cats) > 1:
        head = ["category", "prompts"] + [esc(METRICS[k]) for k in CATEGORY_KEYS]
        body = []
        for c, d in cats.items():
            cells = [esc(c), str(d.n_prompts)] + [mean_std(k, d.metrics[k]) for k in CATEGORY_KEYS]
            body.append(_cells("td", cells, [""] + ["num"] * (len(cells) - 1)))
        out.append(
            "<h2>Per category (mean ± std)</h2><div class='scroll'><table class='t'>"
            + _cells("th", head)
            + "".join(body)
            + "</table></div>"
        )
    return "\n".join(out)


def write_page(rows: list[EvalRow], summary: EvalSummary, out_dir: str | Path) -> Path:
    """The PNG figures and summary.html of an eval run in `out_dir`; returns the page's path."""
    write_figures(rows, summary, out_dir)
    return write_html(summary, render_summary(summary), out_dir)


def write_html(summary: EvalSummary, table: str, out_dir: str | Path) -> Path:
    """summary.html: the summary as tables, the PNG figures embedded (one self-contained file), and the
    terminal table (`table`) one click away."""
    from sinkhole.io import write_atomic

    out = Path(out_dir)
    imgs = [
        f'<figure><img alt="{name}" src="{uri}">'
        f"<figcaption><b>{name}</b>: {html.escape(CAPTIONS.get(name, ''))}</figcaption></figure>"
        for name, uri in embedded(out, FIGURES)
    ]
    model = html.escape(str(summary.run.get("model", {}).get("name", "")))
    suite = html.escape(str(summary.run.get("suite", {}).get("source", "?")))
    chat = summary.chat
    css = static.read("eval.css").rstrip("\n")  # the file ends in a newline, the page's <style> did not
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sinkhole eval: {model}</title>
<style>{css}</style></head>
<body><h1>sinkhole eval: {model}</h1>
<p>{plural(summary.n_prompts, "prompt")} from {suite} · {html.escape(chat_label(chat))}</p>
{tables_html(summary)}
<h2>Figures</h2><div class="figs">{"".join(imgs)}</div>
<details><summary>terminal summary</summary><pre>{html.escape(table)}</pre></details>
</body></html>
"""
    path = out / "summary.html"
    write_atomic(path, page)
    return path
