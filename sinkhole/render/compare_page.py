"""The comparison of two reports or two eval runs as one offline HTML page (`sinkhole compare -o`):
the terminal's numbers as a side-by-side table (compare_text's formats), what the table leaves out,
and for two reports the heads' change in alpha on the top sink as a plotly heatmap."""

from __future__ import annotations

import html

from sinkhole.render.analyze_text import pct
from sinkhole.render.compare_text import head_lines, metric_kind, num, pair, sink_values, spike_values, token_lines
from sinkhole.results.compare import EvalComparison, ReportComparison
from sinkhole.results.eval import METRICS, PERCENT


def _diff(a, b, kind: str) -> str:
    """B - A in the row's unit ('+1.2x', '-3.4%', '+2'), or '' where the values are not two numbers."""
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    if not numbers:
        return ""
    d = b - a
    return ("+" if d >= 0 else "-") + num(abs(d), kind)


def side_by_side(c: ReportComparison | EvalComparison) -> list[tuple[str, str, str, str]]:
    """(label, A, B, B - A) rows of the main numbers, formatted as the terminal formats them (the
    difference is '' where the row is not a number)."""
    rows = [("file", *c.files, ""), ("model", *c.models, "")]
    if isinstance(c, EvalComparison):
        raw = [("prompts", *c.n_prompts, "")]
        raw += [(METRICS.get(k, k), a, b, metric_kind(k)) for k, (a, b) in c.metrics.items()]
        raw.append(("Pearson r(length, sink mass)", *c.length_vs_sink_mass_r, "2"))
        rows += [(label, num(a, kind), num(b, kind), _diff(a, b, kind)) for label, a, b, kind in raw]
        rows.insert(-1, ("spike channels (most common set)", c.channels.a or "none", c.channels.b or "none", ""))
        return rows
    sp, sk, h = c.spikes, c.sinks, c.heads
    top = [f"#{t.position} {t.text!r}: mass {pct(t.attn_mass)}, rate {pct(t.sink_rate, 0)}" for t in sk.top]
    ch = c.channels
    heads = [f"{n} of {t}" if n is not None else "n/a" for n, t in zip(h.n_sink_heads, h.n_heads)]
    rows += [
        ("tokens", *c.n_tokens, _diff(*c.n_tokens, "")),
        ("spike tokens", *sp.n, _diff(*sp.n, "")),
        ("top spike score", *(num(x, "x") for x in sp.top_score), _diff(*sp.top_score, "x")),
        ("sink tokens", *sk.n, _diff(*sk.n, "")),
        ("top sink", *top, _diff(sk.top[0].attn_mass, sk.top[1].attn_mass, "%") + " mass"),
        ("spike channels", ch.a or "none", ch.b or "none", f"only A {ch.only_a}, only B {ch.only_b}"),
        ("sink heads", *heads, _diff(*h.n_sink_heads, "") if h.same_shape else ""),  # other heads: no difference
        ("Spike ∩ Sink (Jaccard)", *(num(x, "2") for x in c.jaccard), _diff(*c.jaccard, "2")),
        ("KV: attention on sink slots", *(num(x, "%") for x in c.kv), _diff(*c.kv, "%")),
    ]
    return rows


def details(c: ReportComparison | EvalComparison) -> list[str]:
    """What the side-by-side table leaves out, in the terminal's words: matched spike and sink tokens and
    the heads that changed most (reports); the per-category means (eval runs)."""
    if isinstance(c, EvalComparison):
        out = []
        for cat, v in c.per_category.items():
            out.append(cat)
            out += [pair(METRICS.get(k, k), ab, "%" if k in PERCENT else "x") for k, ab in v.items()]
        return out
    out = token_lines(c.spikes, "spike", spike_values)
    out += token_lines(c.sinks, "sink", sink_values)
    out += head_lines(c, len(c.heads.largest_changes or []))
    return [line.strip() for line in out]


def compare_html(c: ReportComparison | EvalComparison) -> str:
    """One offline page: the terminal comparison as tables, plus the heads' change as a heatmap."""
    esc = html.escape
    table = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(str(a))}</td><td>{esc(str(b))}</td><td>{esc(d)}</td></tr>"
        for k, a, b, d in side_by_side(c)
    )
    more = details(c)  # what the table leaves out, not the terminal summary again
    rows = f"<table class='t'><tr><th></th><th>A</th><th>B</th><th>B − A</th></tr>{table}</table>" + (
        f"<h2>Details</h2><pre>{esc(chr(10).join(more))}</pre>" if more else ""
    )
    fig = ""
    script = ""
    if isinstance(c, ReportComparison) and c.heads.diff:
        import plotly.offline

        from sinkhole.render.html import embed_json

        data = embed_json({"z": [[round(v, 4) for v in row] for row in c.heads.diff]})
        fig = (
            '<h2>Heads: α on the top sink, B − A</h2><p class="hint">Red: the head gives B\'s top sink more '
            'attention than A\'s; blue: less.</p><div id="fig-diff" style="height:560px;max-width:520px"></div>'
            f'<script type="application/json" id="diff-data">{data}</script>'
        )
        script = (
            f"<script>{plotly.offline.get_plotlyjs()}</script><script>(function(){{"
            "const d=JSON.parse(document.getElementById('diff-data').textContent);"
            "Plotly.newPlot('fig-diff',[{type:'heatmap',z:d.z,zmid:0,zmin:-1,zmax:1,colorscale:'RdBu',"
            "xgap:1,ygap:1,colorbar:{title:{text:'Δα'}},"
            "hovertemplate:'layer %{y} · head %{x}<br>Δα = %{z:.3f}<extra></extra>'}],"
            "{margin:{l:60,r:10,t:10,b:50},xaxis:{title:{text:'head'},dtick:1},yaxis:{title:{text:'layer'},autorange:'reversed'}},"
            "{displaylogo:false,responsive:true,displayModeBar:false});window.sinkholeCompareReady=true;})();</script>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>sinkhole compare: {esc(str(c.models[0]))} vs {esc(str(c.models[1]))}</title>
<style>body{{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#1d2330}}
table.t{{border-collapse:collapse;font-size:13px}}
table.t td,table.t th{{border:1px solid #dde1e8;padding:3px 10px;text-align:left}}
table.t th{{background:#f6f7f9}} pre{{background:#f6f7f9;padding:10px;font-size:12.5px;overflow-x:auto}}
.hint{{color:#5b6475}}
h2{{font-size:17px;border-bottom:1px solid #dde1e8}}</style></head>
<body><h1>sinkhole compare</h1>{rows}{fig}{script}</body></html>
"""
