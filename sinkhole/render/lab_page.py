"""lab.html, the page of a lab run: the analyze report's stylesheet (static/report.css), the tables of
lab_text set as HTML tables, the PNG figures (lab_figures) embedded as data URIs, and a verdict per
claim; it opens offline. `write_outputs` writes the figures and the page (lab.json is written by
`run_lab` as it goes).
"""

from __future__ import annotations

import html
from pathlib import Path

from sinkhole.render import static
from sinkhole.render.lab_figures import FIGURES, write_figures
from sinkhole.render.lab_text import (
    CLAIM_HEADER,
    NOTES,
    RUN_HEADER,
    VARIANT_HEADER,
    claim_rows,
    headline,
    run_rows,
    variant_rows,
)
from sinkhole.render.png import embedded
from sinkhole.results import lab_claims
from sinkhole.results.lab import DEFINITIONS, LabResult

VERDICT_COLOR = {"supported": "#2a7a2a", "contradicted": "#b02a2a", "inconclusive": "#8a6d00", "untestable": "#666"}


def _table(header: list[str], rows: list[list[str]], verdict_col: int | None = None) -> str:
    def cell(i: int, c: str) -> str:
        text = html.escape(c)
        if i == verdict_col:
            color = VERDICT_COLOR.get(c.split(" ")[0], "inherit")
            return f'<td><b style="color:{color}">{text}</b></td>'
        num = i > 0 and (c[:1].isdigit() or c[:1] == "-" and len(c) == 1)
        return f'<td class="num">{text}</td>' if num else f"<td>{text}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table class="gen"><tr>{head}</tr>{body}</table></div>'


def title(result: LabResult) -> str:
    """An honest title: it promises spikes only when the baseline's mean spike score reaches the threshold."""
    s = result.summary()
    base = s.variants.get("baseline")
    if base is not None and base["spike_score"].mean >= s.threshold:
        return "attention sinks and spikes in tiny models"
    return f"attention sinks in tiny models (no spike reached the detector's {s.threshold:g}x)"


def agreement(result: LabResult) -> str:
    """One paragraph: where the toy agrees with the paper and where it does not."""
    by: dict[str, list[str]] = {}
    for c in result.summary().claims:
        by.setdefault(c.verdict, []).append(f"{c.variant} ({c.text})")
    parts = []
    for verdict, label in [
        ("supported", "Agrees with the paper"),
        ("contradicted", "Contradicts the paper"),
        ("inconclusive", "Inconclusive at this many seeds"),
        ("untestable", "Untestable here"),
    ]:
        if by.get(verdict):
            items = "".join(f"<li>{html.escape(x)}</li>" for x in by[verdict])
            parts.append(f'<p><b style="color:{VERDICT_COLOR[verdict]}">{label}</b></p><ul>{items}</ul>')
    return "".join(parts)


def render_html(result: LabResult, out_dir: str | Path) -> str:
    """The page as a string; it embeds the figures that are already in out_dir."""
    imgs = [f'<figure><img class="fig" alt="{name}" src="{uri}"></figure>' for name, uri in embedded(out_dir, FIGURES)]
    env = result.environment
    summary = result.summary()
    switches = {v.name: v.switch for v in result.variants}
    switch_list = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(c)}</li>" for n, c in switches.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sinkhole lab</title><style>
{static.read("report.css")}
figure {{ margin: 8px 0; }}</style></head>
<body><header><h1>sinkhole lab: <span class="model">{html.escape(title(result))}</span></h1>
<div class="sub">{html.escape(headline(result))}<br>torch {html.escape(str(env.torch))},
{html.escape(str(env.threads))} thread(s), started {html.escape(str(env.started))}</div></header>
<h2>Per variant: last checkpoint, mean ± sd over seeds</h2>
{_table(VARIANT_HEADER, variant_rows(result))}
<p class="sub">{html.escape(" ".join(NOTES))}</p>
<h2>The paper's claims, our verdicts</h2>
<p>Rule: {html.escape(summary.rule)}. Spike claims are untestable while the baseline has no spike
(mean spike score below the detector's {summary.threshold:g}x).</p>
{_table(CLAIM_HEADER, claim_rows(result), verdict_col=len(CLAIM_HEADER) - 1)}
<h2>Where the toy agrees with the paper, and where it does not</h2>
{agreement(result)}
<h2>Figures</h2>{"".join(imgs)}
<h2>What each variant switches</h2><ul>{switch_list}</ul>
<details class="term"><summary>Every run</summary>{_table(RUN_HEADER, run_rows(result))}</details>
<details class="term"><summary>Definitions</summary><pre>{html.escape(DEFINITIONS)}</pre>
<pre>{html.escape(lab_claims.__doc__ or "")}</pre></details>
</body></html>
"""


def write_outputs(result: LabResult, out_dir: str | Path, figures: bool = True) -> list[Path]:
    """Figures and lab.html into out_dir (lab.json is written by `run_lab` as it goes)."""
    from sinkhole.io import write_atomic

    out = Path(out_dir)
    paths = write_figures(result, out) if figures else []
    page = out / "lab.html"
    write_atomic(page, render_html(result, out))
    return paths + [page]
