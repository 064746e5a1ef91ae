"""lab.html, the page of a lab run: the analyze report's stylesheet (static/report.css), the terminal
table (lab_text), the PNG figures (lab_figures) embedded as data URIs, and the claims; it opens offline.
`write_outputs` writes the figures and the page (lab.json is written by `run_lab` as it goes).
"""

from __future__ import annotations

import html
from pathlib import Path

from sinkhole.lab.run import LabResult
from sinkhole.report import static
from sinkhole.report.lab_figures import FIGURES, write_figures
from sinkhole.report.lab_text import render_table
from sinkhole.report.png import embedded


def render_html(result: LabResult, out_dir: str | Path) -> str:
    """The page as a string; it embeds the figures that are already in out_dir."""
    from sinkhole.lab import train as train_module

    imgs = [f'<figure><img class="fig" alt="{name}" src="{uri}"></figure>' for name, uri in embedded(out_dir, FIGURES)]
    claim = {v.name: v.claim for v in result.variants}  # one line per variant, however many seeds it ran
    claims = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(c)}</li>" for n, c in claim.items())
    env = result.environment
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sinkhole lab</title><style>
{static.read("report.css")}
figure {{ margin: 8px 0; }} pre.table {{ background: var(--bg); padding: 10px; overflow-x: auto; }}</style></head>
<body><header><h1>sinkhole lab: <span class="model">emergence of sinks and spikes in tiny models</span></h1>
<div class="sub">torch {html.escape(str(env.get("torch")))}, {html.escape(str(env.get("threads")))} thread(s),
started {html.escape(str(env.get("started")))}</div></header>
<h2>Final checkpoint, one switch per variant</h2>
<pre class="table">{html.escape(render_table(result))}</pre>
<h2>Figures</h2>{"".join(imgs)}
<h2>What each variant tests</h2><ul>{claims}</ul>
<details class="term"><summary>Definitions</summary><pre>{html.escape(train_module.__doc__ or "")}</pre></details>
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
