"""HTML rendering: one self-contained file, no network. Token text is untrusted and always escaped.

This is the simple page of the core issue: summary, token strip and tables. The interactive report
(plotly, inlined) replaces `render_html` while keeping its signature.
"""

from __future__ import annotations

import html
from pathlib import Path

from sinkhole.report.terminal import render_analysis

MAPS_MAX_LEN = 0  # full attention maps are not shown by the simple page


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def render_html(report: dict) -> str:
    mass = report["sinks"]["per_token_mass"]
    top = max(mass) if mass else 1.0
    spikes = {s["position"] for s in report["spikes"]["tokens"]}
    sinks = {s["position"] for s in report["sinks"]["tokens"]}
    strip = []
    for tok, m in zip(report["tokens"], mass):
        cls = " ".join(c for c, on in (("spike", tok["position"] in spikes), ("sink", tok["position"] in sinks)) if on)
        strip.append(
            f'<span class="tok {cls}" style="background: rgba(220,60,40,{m / top:.3f})" '
            f'title="pos {tok["position"]} mass {m:.3%}">{_esc(tok["text"])}</span>'
        )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>sinkhole report: {_esc(report['model']['name'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} pre{{background:#f4f4f4;padding:1em}}
.tok{{font-family:monospace;white-space:pre;border:1px solid #ddd;margin:1px;display:inline-block}}
.spike{{outline:2px solid #1f6feb}} .sink{{font-weight:bold}}</style></head><body>
<h1>sinkhole report</h1><pre>{_esc(render_analysis(report))}</pre>
<h2>Tokens (colour: attention mass received; blue outline: spike; bold: sink)</h2><div>{''.join(strip)}</div>
</body></html>"""


def write_html(report: dict, path: str | Path, capture=None) -> None:
    from sinkhole.models.loading import write_atomic

    write_atomic(Path(path), render_html(report))
