"""HTML rendering: one self-contained, interactive file that opens offline (plotly.js inlined, no CDN).

Layout: summary cards (the terminal's numbers) with the metric definitions one click away (taken
from `sinkhole.analysis.core`'s docstring, so the page and the code cannot disagree); the prompt as
a token strip coloured by attention mass; a layers x heads grid of mass on the top sink, whose cells
select the head whose attention pattern is drawn; the residual lifecycle (layers x tokens ||h||, log
scale) and the spike channels across layers; generic sections for `mechanism`, `eval` and any other
extra report key. The data it draws is `html_data.view(...)`, embedded once as JSON.

Token text is untrusted. Python-side text is escaped with `html.escape`; the embedded JSON escapes
`<`, `>`, `&` (so no `</script>` or `<!--` can close or confuse its script tag); the script writes
text with `textContent` only, and escapes text it hands to plotly, which renders a subset of HTML in
labels and hover text.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from sinkhole.report.html_data import MAPS_MAX_LEN, view
from sinkhole.report.html_script import CSS, SCRIPT
from sinkhole.report.terminal import render_analysis

__all__ = ["MAPS_MAX_LEN", "render_html", "write_html"]  # MAPS_MAX_LEN: the CLI's ModelProbe(maps_max_len=)


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _vis(text: str, n: int = 24) -> str:
    """Token text as one visible line (newlines shown as ↵), shortened; still needs escaping."""
    s = text.replace("\n", "↵").replace("\r", "␍").replace("\t", "⇥")
    return s if len(s) <= n else s[: n - 1] + "…"


def embed_json(data) -> str:
    """JSON safe inside <script type="application/json">: no '<', '>', '&' or line separators in it.

    Those characters can only occur inside JSON strings, where their \\u escapes mean the same."""
    s = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for ch, rep in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        s = s.replace(ch, rep)
    return s


def definitions_html() -> str:
    """The module docstring of sinkhole.analysis.core as headed lists, each heading an anchor."""
    from sinkhole.analysis import core

    out, items = [], []

    def flush():
        if items:
            out.append("<ul>" + "".join(f"<li>{_esc(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for para in (core.__doc__ or "").strip().split("\n\n"):
        lines = para.splitlines()
        if not any(line.startswith("- ") for line in lines):
            flush()
            out.append(f"<p>{_esc(' '.join(line.strip() for line in lines))}</p>")
            continue
        if not lines[0].startswith("- "):
            anchor = "def-" + lines[0].split()[0].lower()
            out.append(f'<h3 id="{_esc(anchor)}">{_esc(lines[0].strip())}</h3>')
            lines = lines[1:]
        for line in lines:
            if line.startswith("- "):
                items.append(line[2:].strip())
            elif items:
                items[-1] += " " + line.strip()
        flush()
    return "\n".join(out)


PAGE_DEFINITIONS = [  # what this page draws beyond sinkhole.analysis.core's definitions
    "A_{l,h}[t, k]: attention probability from query t to key k; entries above the diagonal are masked (empty).",
    "Heads grid: alpha_{l,h}(top sink), the mass each head gives the token with the largest attention mass.",
    "Per-key view (long inputs): alpha_{l,h}(k) of every key k for each head of the selected layer.",
    "Token strip colour: sqrt(attention mass of the token / the largest attention mass of the prompt).",
    "Residual heatmap: ||h_l[t]|| on a log colour scale; row 'emb' is ||embedding[t]||.",
    "Spike channels: h_l[t, c] of the selected token; the probe records each token's K largest |h_l[t, c]| "
    "per layer, so a channel outside them has no value at that layer (a gap, not a zero).",
    "Numbers are rounded to 4 significant digits; full maps are stored with 8 bits on a square-root scale "
    "(error <= 1/255), alpha as float16.",
]


def _card(title: str, value: str, lines: list[str], anchor: str) -> str:
    body = "".join(f"<div class='line'>{ln}</div>" for ln in lines)  # lines are already escaped
    return (f"<div class='card'><div class='card-h'>{_esc(title)}"
            f"<button class='def' data-def='{anchor}' title='definition'>?</button></div>"
            f"<div class='card-v'>{value}</div>{body}</div>")


def cards_html(r: dict) -> str:
    """The terminal output's four blocks as cards (values formatted the same way)."""
    sp, sk, kv = r["spikes"], r["sinks"], r["kv"]

    def tok(s):
        return f"<code>{_esc(_vis(s['text']))}</code> <span class='pos'>#{s['position']}</span>"

    spike_lines = [f"threshold {sp['threshold']:.1f}× median peak norm"] + [
        f"{tok(s)} score {s['score']:.1f}× · max |h| {abs(s['top_value']):.0f} (layer {s['layer']}, channel "
        f"{s['channel']}) · channels {_esc(s['channels'])} · rises at {_esc(s['step_up_layers'])}, "
        f"falls at {_esc(s['step_down_layers'])}" for s in sp["tokens"][:6]]
    if len(sp["tokens"]) > 6:
        spike_lines.append(f"… and {len(sp['tokens']) - 6} more")
    sink_lines = [f"ε {sk['epsilon']}, sink rate ≥ {sk['min_sink_rate']:.0%}"] + [
        f"{tok(s)} attention mass {s['attn_mass']:.1%} · sink rate {s['sink_rate']:.0%} of heads"
        for s in sk["tokens"][:6]]
    if len(sk["tokens"]) > 6:
        sink_lines.append(f"… and {len(sk['tokens']) - 6} more")
    if not sk["tokens"]:
        t = sk["top"]
        sink_lines.append(f"top token by mass: {tok(t)} mass {t['attn_mass']:.1%}, sink rate {t['sink_rate']:.0%}")
    j = r["overlap"]["jaccard"]
    extra = []
    if r.get("learned_sinks"):
        from sinkhole.report.terminal import learned_sinks_line

        ls = r["learned_sinks"]
        extra.append(_card("Learned sinks", f"{ls['mean_share']:.1%}",
                           [_esc(learned_sinks_line(ls).removeprefix("Learned sinks  absorb ")),
                            "per layer and head: the learned_sinks section below"], "def-learned"))
    return "".join(extra + [
        _card("Spike tokens", str(len(sp["tokens"])), spike_lines, "def-spikes"),
        _card("Sink tokens", str(len(sk["tokens"])), sink_lines, "def-sinks"),
        _card("Spike ∩ Sink", "n/a" if j is None else f"{j:.2f}",
              ["Jaccard of the two position sets" + ("" if j is not None else " (no spike or sink tokens)"),
               f"shared positions {_esc(r['overlap']['positions'])}"], "def-together"),
        _card("KV impact", f"{kv['sink_attention_share']:.1%}",
              [f"of attention lands on {kv['n_sink_slots']} of {kv['n_slots']} KV slots "
               f"({kv['sink_slot_share']:.1%})"], "def-together"),
    ])


def render_html(report: dict, capture=None) -> str:
    """The report page. With the run's Capture it also draws per-head attention and spike channels."""
    import plotly.offline

    m = report["model"]
    from sinkhole.report.terminal import layout_line

    model_line = (f"{m['architecture']}, {m['n_layers']} layers, {m['n_heads']} heads, {m['n_kv_heads']} KV heads, "
                  f"d_model {m['d_model']}, {m['dtype']} · {len(report['tokens'])} tokens"
                  f"{' · chat template' if report.get('chat') else ''} · "
                  f"{layout_line(report).removeprefix('Layout  ')}")
    data = embed_json(view(report, capture))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>sinkhole report: {_esc(m['name'])}</title>
<style>{CSS}</style>
</head><body>
<header><h1>sinkhole report <span class="model">{_esc(m['name'])}</span></h1>
<div class="sub">{_esc(model_line)} <button class="def linkish" data-def="def-spikes">definitions</button></div></header>
<section class="cards">{cards_html(report)}</section>
<details class="term"><summary>terminal summary</summary><pre>{_esc(render_analysis(report))}</pre></details>

<section><h2>Tokens <button class="def" data-def="def-sinks">?</button></h2>
<p class="hint">Colour: √(attention mass received / the largest); <span class="tok spike">blue outline</span>
spike token; <span class="tok sink">underlined</span> sink token. Hover for values, click to select a token.</p>
<div id="strip" class="strip"></div>
<div id="fig-tokens" class="fig short"></div></section>

<section><h2>Heads <button class="def" data-def="def-sinks">?</button></h2>
<p class="hint">Left: each head's attention mass α on the top sink token. Click a cell (or use the menus) to
select a layer and head; right: that head's attention.</p>
<div class="row"><div class="gridcol"><div id="cap-heads" class="figcap"></div><div id="fig-heads" class="fig grid"></div></div>
<div class="col"><div class="controls">layer <select id="sel-layer"></select> head <select id="sel-head"></select>
<label title="√ colour scale; log scale for the α line"><input type="checkbox" id="chk-sqrt" checked> emphasise small values</label></div>
<p id="maps-note" class="note"></p><div id="cap-attn" class="figcap"></div><div id="fig-attn" class="fig attn"></div></div></div></section>

<section><h2>Residual lifecycle <button class="def" data-def="def-spikes">?</button></h2>
<p class="hint">‖h_l[t]‖ of every token after every layer (log colour; row “emb” is the input embedding).
Click a token to follow it below.</p>
<div id="fig-resid" class="fig resid"></div>
<div class="row"><div class="col"><div class="controls">&nbsp;</div>
<div class="figcap">‖h_l‖ per layer: largest and median over tokens</div><div id="fig-layers" class="fig half"></div></div>
<div class="col"><div class="controls">token <select id="sel-token"></select></div>
<div id="cap-channels" class="figcap"></div><div id="fig-channels" class="fig half"></div><p id="channels-note" class="note"></p></div></div></section>

<div id="sections"></div>
<footer>schema {_esc(report.get('schema', ''))} · weights {_esc(m.get('weights_id') or 'n/a')} ·
written by sinkhole; opens offline (plotly.js is inlined).</footer>

<dialog id="defs"><form method="dialog"><button class="close">close</button></form>
<h2>Definitions</h2><div class="defs-body">{definitions_html()}
<h3 id="def-page">On this page</h3><ul>{''.join(f"<li>{_esc(d)}</li>" for d in PAGE_DEFINITIONS)}</ul></div></dialog>

<script type="application/json" id="sinkhole-data">{data}</script>
<script>{plotly.offline.get_plotlyjs()}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def write_html(report: dict, path: str | Path, capture=None) -> None:
    from sinkhole.models.loading import write_atomic

    write_atomic(Path(path), render_html(report, capture=capture))
