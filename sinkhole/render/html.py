"""HTML rendering: one self-contained, interactive file that opens offline (plotly.js inlined, no CDN).

Layout: summary cards (the terminal's numbers) with the metric definitions one click away (the text of
sinkhole.results.definitions, which is `sinkhole.analysis.core`'s docstring, so the page and the code
cannot disagree); the prompt as a token strip coloured by attention mass; a layers x heads grid of
mass on the top sink, whose cells select the head whose attention pattern is drawn; the residual
lifecycle (layers x tokens ||h||, log scale) and the spike channels across layers; generic sections
for `mechanism`, `eval` and any other extra report key. The data it draws is `html_data.view(report)`,
embedded once as JSON; it reads the typed report only (its `detail` holds what the page needs from
the Capture).

Token text is untrusted. Python-side text is escaped with `html.escape`; the embedded JSON escapes
`<`, `>`, `&` (so no `</script>` or `<!--` can close or confuse its script tag); the script writes
text with `textContent` only, and escapes text it hands to plotly, which renders a subset of HTML in
labels and hover text.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from sinkhole.render import static
from sinkhole.render.analyze_text import concentration, pct, render_analysis
from sinkhole.render.html_data import view
from sinkhole.render.html_mechanism import MECH_HTML, designed
from sinkhole.results.definitions import DEFINITIONS
from sinkhole.results.mechanism import MechanismResult
from sinkhole.results.report import MAPS_MAX_LEN, SCHEMA, Report

__all__ = ["MAPS_MAX_LEN", "render_html", "write_html"]  # MAPS_MAX_LEN (sinkhole.results.report): re-exported


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
    for ch, rep in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        s = s.replace(ch, rep)
    return s


def _styles(mech: bool) -> str:
    """static/report.css (+ mechanism.css for a designed Mechanism section), each file on lines of its own."""
    return "\n" + static.read("report.css") + ("\n" + static.read("mechanism.css") if mech else "")


def _mech_script(mech: bool) -> str:
    return "<script>\n" + static.read("mechanism.js") + "</script>" if mech else ""


_SUB = re.compile(r"(?:(?<=[^\W\d_])|(?<=[\])‖]))_(\{[^{}]+\}|[A-Za-z0-9][*']?)(?![A-Za-z0-9_])")
_WORDS = [
    (r"(?<![A-Za-z])alpha(?![A-Za-z])", "α"),
    (r"(?<![A-Za-z])epsilon(?![A-Za-z])", "ε"),
    (">=", "≥"),
    ("<=", "≤"),
    (r"\|\|", "‖"),
    (r"\s\*\s", " · "),
]


def math_html(text: str) -> str:
    """One line of the definitions docstring as HTML: `code`, *emphasis*, α, ε, ‖x‖, ≥, and subscripts
    (h_l[t] -> h<sub>l</sub>[t], alpha_{l,h} -> α<sub>l,h</sub>); snake_case names stay as they are."""
    out = []
    for i, part in enumerate(text.split("`")):
        if i % 2:  # inside backticks
            out.append(f"<code>{_esc(part)}</code>")
            continue
        for pat, rep in _WORDS:
            part = re.sub(pat, rep, part)
        part = html.escape(part, quote=False)
        part = _SUB.sub(lambda m: f"<sub>{m.group(1).strip('{}')}</sub>", part)
        part = re.sub(r"(?<![\w*])\*(\w[^*]*?)\*(?![\w*])", r"<em>\1</em>", part)
        out.append(part)
    return "".join(out)


def _item(text: str) -> str:
    """'term: definition' items get the term in bold."""
    head, sep, rest = text.partition(": ")
    if sep and len(head) <= 40 and "=" not in head:
        return f"<b>{math_html(head)}</b>: {math_html(rest.strip())}"
    return math_html(text)


def definitions_html() -> str:
    """The definitions text (sinkhole.results.definitions, sinkhole.analysis.core's docstring) as headed
    lists, each heading an anchor."""
    out, items = [], []

    def flush():
        if items:
            out.append("<ul>" + "".join(f"<li>{_item(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for para in DEFINITIONS.strip().split("\n\n"):
        lines = para.splitlines()
        if not any(line.startswith("- ") for line in lines):
            flush()
            out.append(f"<p>{math_html(' '.join(line.strip() for line in lines))}</p>")
            continue
        if not lines[0].startswith("- "):
            anchor = "def-" + lines[0].split()[0].lower()
            out.append(f'<h3 id="{_esc(anchor)}">{math_html(lines[0].strip())}</h3>')
            lines = lines[1:]
        for line in lines:
            if line.startswith("- "):
                items.append(line[2:].strip())
            elif items:
                items[-1] += " " + line.strip()
        flush()
    return "\n".join(out)


PAGE_DEFINITIONS = [  # what this page draws beyond the report's definitions
    "A_{l,h}[t, k]: attention probability from query t to key k; entries above the diagonal are masked (empty).",
    "Heads grid: alpha_{l,h}(top sink), the mass each head gives the token with the largest attention mass.",
    "Per-key view (long inputs): alpha_{l,h}(k) of every key k for each head of the selected layer.",
    "Token strip colour: √(attention mass of the token / the largest attention mass of the prompt).",
    "Residual heatmap: ||h_l[t]|| on a log colour scale; row 'emb' is ||embedding[t]||.",
    "Spike channels: h_l[t, c] of the selected token; the probe records each token's K largest |h_l[t, c]| "
    "per layer, so a channel outside them has no value at that layer (a gap, not a zero).",
    "Numbers are rounded to 4 significant digits; full maps are stored with 8 bits on a square-root scale "
    "(error <= 1/255), alpha as float16.",
]


MECH_DEFINITIONS = """<h3 id="def-mechanism">Mechanism</h3><ul>
<li><b>block</b> b: 2l is layer l's attention, 2l+1 its FFN; r<sub>b</sub> the residual after block b.</li>
<li><b>U<sub>k</sub></b> = W<sub>gate</sub><sup>T</sup> diag(W<sub>down</sub>[k, :]) W<sub>up</sub>,
S<sub>k</sub> = (U<sub>k</sub> + U<sub>k</sub><sup>T</sup>)/2:
the step-up FFN's output channel k is ≈ x<sup>T</sup> S<sub>k</sub> x; ranks are 1-based
(rank 1 = largest ‖U<sub>k</sub>‖<sub>F</sub>).</li>
<li><b>sparsity</b>: share of a norm output's squared mass in the spike channels.</li>
<li><b>participation ratio</b> of a set of keys:
(Σ s<sub>i</sub><sup>2</sup>)<sup>2</sup> / Σ s<sub>i</sub><sup>4</sup> over its singular values
(1 = one direction).</li>
<li><b>sink head</b>: α on the sink tokens > ε, mean over the prompts. Details: docs/mechanism.md.</li></ul>"""


def _card(title: str, value: str, lines: list[str], anchor: str) -> str:
    body = "".join(f"<div class='line'>{ln}</div>" for ln in lines)  # lines are already escaped
    return (
        f"<div class='card'><div class='card-h'>{_esc(title)}"
        f"<button class='def' data-def='{anchor}' title='definition'>?</button></div>"
        f"<div class='card-v'>{value}</div>{body}</div>"
    )


def cards_html(r: Report) -> str:
    """The terminal output's four blocks as cards (values formatted the same way)."""
    sp, sk = r.spikes, r.sinks

    def tok(text: str, position: int) -> str:
        return f"<code>{_esc(_vis(text))}</code> <span class='pos'>#{position}</span>"

    spike_lines = [f"threshold {sp.threshold:.1f}× median peak norm"] + [
        f"{tok(s.text, s.position)} score {s.score:.1f}× · max |h| {abs(s.top_value):.0f} (layer {s.layer}, "
        f"channel {s.channel}) · channels {_esc(s.channels)} · rises at {_esc(s.step_up_layers)}, "
        f"falls at {_esc(s.step_down_layers)}"
        for s in sp.tokens[:6]
    ]
    if len(sp.tokens) > 6:
        spike_lines.append(f"… and {len(sp.tokens) - 6} more")
    sink_lines = [f"ε {sk.epsilon}, sink rate ≥ {pct(sk.min_sink_rate, 0)}"] + [
        f"{tok(s.text, s.position)} attention mass {pct(s.attn_mass)} · sink rate {pct(s.sink_rate, 0)} of heads"
        for s in sk.tokens[:6]
    ]
    if len(sk.tokens) > 6:
        sink_lines.append(f"… and {len(sk.tokens) - 6} more")
    if not sk.tokens:
        t = sk.top
        sink_lines.append(
            f"top token by mass: {tok(t.text, t.position)} mass {pct(t.attn_mass)}, sink rate {pct(t.sink_rate, 0)}"
        )
    if not sp.tokens and sp.per_token_score:
        sc = sp.per_token_score
        t = max(range(len(sc)), key=lambda i: -1 if sc[i] is None else sc[i])
        spike_lines.append(f"top score: {tok(r.tokens[t].text, t)} {sc[t]:.1f}× (below the threshold)")
    j = r.overlap.jaccard
    extra = []
    if r.learned_sinks:
        from sinkhole.render.analyze_text import learned_sinks_line

        ls = r.learned_sinks
        extra.append(
            _card(
                "Learned sinks",
                f"{ls.mean_share:.1%}",
                [
                    _esc(learned_sinks_line(ls).removeprefix("Learned sinks  absorb ")),
                    "per layer and head: the learned_sinks section below",
                ],
                "def-learned",
            )
        )
    return "".join(
        extra
        + [
            _card("Spike tokens", str(len(sp.tokens)), spike_lines, "def-spikes"),
            _card("Sink tokens", str(len(sk.tokens)), sink_lines, "def-sinks"),
            _card(
                "Spike ∩ Sink",
                "n/a" if j is None else f"{j:.2f}",
                [
                    "Jaccard of the two position sets" + ("" if j is not None else " (no spike or sink tokens)"),
                    f"shared positions {_esc(r.overlap.positions)}",
                ],
                "def-together",
            ),
            _card("KV impact", *kv_card(r), "def-together"),
        ]
    )


def kv_card(r: Report) -> tuple[str, list[str]]:
    """The KV card's value and lines. The sink slots' share of attention equals the sink's attention
    mass when the only sink is token 0 (every query sees it), so the card leads with what that share
    means for a KV cache instead: how concentrated it is, and which slots a cache must keep."""
    kv, sinks = r.kv, [s.position for s in r.sinks.tokens]
    c = concentration(kv)
    if c is None:
        return "none", [f"no sink tokens: attention spreads over the {kv.n_slots} KV slots"]
    where = "token 0" if sinks == [0] else f"positions {_esc(sinks[:8])}" + (" …" if len(sinks) > 8 else "")
    return f"{c:.0f}×", [
        f"per sink slot, {c:.0f}× an average slot's share of attention: {kv.n_sink_slots} of {kv.n_slots} "
        f"slots ({pct(kv.sink_slot_share)}) take {pct(kv.sink_attention_share)}",
        f"a KV cache that evicts {where} loses it; keep {kv.n_sink_slots} pinned slot"
        f"{'s' if kv.n_sink_slots > 1 else ''} (<code>sinkhole stream --sinks</code>, <code>SinkCache</code>)",
    ]


def render_html(result: Report | MechanismResult | dict) -> str:
    """The report page (a `sinkhole mechanism` result: its example prompt's page plus the Mechanism
    section). A report from `analyze()` carries its `detail`, so the page also draws per-head
    attention and spike channels; one read back from JSON (a dict) draws without them."""
    import plotly.offline

    from sinkhole.render.analyze_text import as_report, layout_line

    mechanism = None
    if isinstance(result, MechanismResult):
        report, mechanism = result.example, result
    else:
        report = as_report(result)
    m = report.model
    model_line = (
        f"{m.architecture}, {m.n_layers} layers, {m.n_heads} heads, {m.n_kv_heads} KV heads, "
        f"d_model {m.d_model}, {m.dtype} · {len(report.tokens)} tokens"
        f"{' · chat template' if report.chat else ''} · "
        f"{layout_line(report).removeprefix('Layout  ')}"
    )
    data = embed_json(view(report, mechanism))
    mech = designed(mechanism if mechanism is not None else report.extra.get("mechanism"))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>sinkhole report: {_esc(m.name)}</title>
<style>{_styles(mech)}</style>
</head><body>
<header><h1>sinkhole report <span class="model">{_esc(m.name)}</span></h1>
<div class="sub">{_esc(model_line)}
<button class="def linkish" data-def="def-spikes">definitions</button></div></header>
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
<div class="row"><div class="gridcol"><div id="cap-heads" class="figcap"></div>
<div id="fig-heads" class="fig grid"></div></div>
<div class="col"><div class="controls">layer <select id="sel-layer"></select> head <select id="sel-head"></select>
<label title="√ colour scale; log scale for the α line"><input type="checkbox" id="chk-sqrt" checked>
emphasise small values</label></div>
<p id="maps-note" class="note"></p><div id="cap-attn" class="figcap"></div>
<div id="fig-attn" class="fig attn"></div></div></div></section>

<section><h2>Residual lifecycle <button class="def" data-def="def-spikes">?</button></h2>
<p class="hint">‖h_l[t]‖ of every token after every layer (log colour; row “emb” is the input embedding).
Click a token to follow it below.</p>
<div id="fig-resid" class="fig resid"></div>
<div class="row"><div class="col"><div class="controls">&nbsp;</div>
<div class="figcap">‖h_l‖ per layer: largest and median over tokens</div>
<div id="fig-layers" class="fig half"></div></div>
<div class="col"><div class="controls">token <select id="sel-token"></select></div>
<div id="cap-channels" class="figcap"></div><div id="fig-channels" class="fig half"></div>
<p id="channels-note" class="note"></p></div></div></section>

{MECH_HTML if mech else ""}
<div id="sections"></div>
<footer>schema {_esc(SCHEMA)} · weights {_esc(m.weights_id or "n/a")} ·
written by sinkhole; opens offline (plotly.js is inlined).</footer>

<dialog id="defs"><form method="dialog"><button class="close">close</button></form>
<h2>Definitions</h2><div class="defs-body">{definitions_html()}
<h3 id="def-page">On this page</h3><ul>{"".join(f"<li>{_item(d)}</li>" for d in PAGE_DEFINITIONS)}</ul>
{MECH_DEFINITIONS if mech else ""}</div></dialog>

<script type="application/json" id="sinkhole-data">{data}</script>
<script>{plotly.offline.get_plotlyjs()}</script>
{_mech_script(mech)}
<script>
{static.read("report.js")}</script>
</body></html>
"""


def write_html(result: Report | MechanismResult | dict, path: str | Path) -> None:
    from sinkhole.io import write_output

    write_output(Path(path), render_html(result), "HTML report")
