"""Two reports side by side (`sinkhole compare`): what changed in spikes, sinks, channels and heads.

Inputs are JSON files sinkhole wrote: two `analyze` reports ("sinkhole.report/1", e.g. two models on
one prompt, or one model on two prompts) or two eval runs ("sinkhole.eval-summary/1"; a run
directory stands for its summary.json); two reports are read back into typed `Report`s
(`Report.from_dict`) before they are compared. `compare(a, b)` returns one JSON-ready dict
("sinkhole.compare/1"); `render_compare` prints it; `compare_html` draws it as one offline page.

Matching: spike and sink tokens are matched by position (a position in one report only is "added"
or "removed"); spike channels are compared as sets (the union over spike tokens); heads by
(layer, head) when both models have the same layers x heads, otherwise only their counts.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from sinkhole.errors import SinkholeError
from sinkhole.render.analyze_text import pct
from sinkhole.results.report import Report

SCHEMA = "sinkhole.compare/1"
REPORT, EVAL = "sinkhole.report/1", "sinkhole.eval-summary/1"
TOP_HEADS = 10  # heads with the largest change in alpha on the top sink, listed


def load(path: str | Path) -> dict:
    """A report or eval summary; a directory means its summary.json. One-line errors for anything else."""
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SinkholeError(f"not found: {p}") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise SinkholeError(f"cannot read {p} as JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(d, dict) or d.get("schema") not in (REPORT, EVAL):
        raise SinkholeError(f"{p} is neither an analyze report ({REPORT}) nor an eval summary ({EVAL})")
    d["_path"] = str(p)
    return d


def _channels(r: Report) -> list[int]:
    from sinkhole.analysis.core import order_channels

    return order_channels([s.channels for s in r.spikes.tokens])


def _by_pos(tokens: list, keys: tuple) -> dict:
    return {t.position: {k: t.get(k) for k in keys} for t in tokens}


def _matched(a: list, b: list, keys: tuple) -> dict:
    pa, pb = _by_pos(a, keys), _by_pos(b, keys)
    return {
        "both": [{"position": p, "a": pa[p], "b": pb[p]} for p in sorted(set(pa) & set(pb))],
        "only_a": [{"position": p, **pa[p]} for p in sorted(set(pa) - set(pb))],
        "only_b": [{"position": p, **pb[p]} for p in sorted(set(pb) - set(pa))],
    }


def _heads(a: Report, b: Report) -> dict:
    ha = a.heads.mass_on_top_sink if a.heads is not None else None
    hb = b.heads.mass_on_top_sink if b.heads is not None else None
    eps_a, eps_b = a.sinks.epsilon, b.sinks.epsilon
    out = {
        "n_sink_heads": [
            None if ha is None else sum(v > eps_a for row in ha for v in row),
            None if hb is None else sum(v > eps_b for row in hb for v in row),
        ],
        "n_heads": [None if ha is None else sum(len(r) for r in ha), None if hb is None else sum(len(r) for r in hb)],
        "same_shape": bool(ha and hb and len(ha) == len(hb) and all(len(x) == len(y) for x, y in zip(ha, hb))),
    }
    if out["same_shape"]:
        diff = [[y - x for x, y in zip(ra, rb)] for ra, rb in zip(ha, hb)]
        cells = sorted(((abs(d), l, h) for l, row in enumerate(diff) for h, d in enumerate(row)), reverse=True)
        out["diff"] = diff
        out["largest_changes"] = [
            {"layer": l, "head": h, "a": ha[l][h], "b": hb[l][h]} for _, l, h in cells[:TOP_HEADS]
        ]
        out["started_sinking"] = [
            [l, h] for l, row in enumerate(ha) for h, v in enumerate(row) if v <= eps_a < hb[l][h]
        ]
        out["stopped_sinking"] = [
            [l, h] for l, row in enumerate(ha) for h, v in enumerate(row) if v > eps_a >= hb[l][h]
        ]
    return out


def compare_reports(a: Report, b: Report, files: tuple = (None, None)) -> dict:
    """Two typed reports (`Report.from_dict` of the files `load` read); `files`: their paths, for the output."""
    ca, cb = _channels(a), _channels(b)
    top_keys = ("position", "text", "attn_mass", "sink_rate")
    return {
        "schema": SCHEMA,
        "kind": "report",
        "files": list(files),
        "models": [a.model["name"], b.model["name"]],
        "weights": [a.model.get("weights_id"), b.model.get("weights_id")],
        "n_tokens": [len(a.tokens), len(b.tokens)],
        "same_prompt": a.prompt == b.prompt and [t.id for t in a.tokens] == [t.id for t in b.tokens],
        "spikes": {
            "n": [len(a.spikes.tokens), len(b.spikes.tokens)],
            "top_score": [max(a.spikes.per_token_score or [0]), max(b.spikes.per_token_score or [0])],
            **_matched(a.spikes.tokens, b.spikes.tokens, ("text", "score", "layer", "channel", "channels")),
        },
        "sinks": {
            "n": [len(a.sinks.tokens), len(b.sinks.tokens)],
            "top": [{k: a.sinks.top[k] for k in top_keys}, {k: b.sinks.top[k] for k in top_keys}],
            **_matched(a.sinks.tokens, b.sinks.tokens, ("text", "attn_mass", "sink_rate")),
        },
        "channels": {
            "a": ca,
            "b": cb,
            "both": [c for c in ca if c in cb],
            "only_a": [c for c in ca if c not in cb],
            "only_b": [c for c in cb if c not in ca],
        },
        "jaccard": [a.overlap.jaccard, b.overlap.jaccard],
        "kv": [a.kv.sink_attention_share, b.kv.sink_attention_share],
        "heads": _heads(a, b),
    }


def compare_evals(a: dict, b: dict) -> dict:
    run = lambda d: d.get("run") or {}  # noqa: E731
    ma, mb = a["metrics"], b["metrics"]
    cats = [c for c in a.get("per_category", {}) if c in b.get("per_category", {})]
    return {
        "schema": SCHEMA,
        "kind": "eval",
        "files": [a.get("_path"), b.get("_path")],
        "models": [run(a).get("model", {}).get("name"), run(b).get("model", {}).get("name")],
        "n_prompts": [a["n_prompts"], b["n_prompts"]],
        "metrics": {k: [ma[k]["mean"], mb[k]["mean"]] for k in ma if k in mb},
        "channels": {
            "a": a["spike_channels"]["most_common_set"],
            "b": b["spike_channels"]["most_common_set"],
            "share": [a["spike_channels"]["same_set_share"], b["spike_channels"]["same_set_share"]],
        },
        "top_sink_positions": [a["top_sink_positions"], b["top_sink_positions"]],
        "length_vs_sink_mass_r": [a["length_vs_sink_mass_r"], b["length_vs_sink_mass_r"]],
        "per_category": {
            c: {
                k: [a["per_category"][c]["metrics"][k]["mean"], b["per_category"][c]["metrics"][k]["mean"]]
                for k in ("spike_score", "sink_mass")
            }
            for c in cats
        },
    }


def compare(a: dict, b: dict) -> dict:
    if a["schema"] != b["schema"]:
        raise SinkholeError("compare two analyze reports or two eval runs, not one of each")
    if a["schema"] == REPORT:  # read back into typed reports at this edge
        return compare_reports(_typed(a), _typed(b), (a.get("_path"), b.get("_path")))
    return compare_evals(a, b)


def _typed(d: dict) -> Report:
    try:
        return Report.from_dict(d)
    except (KeyError, TypeError, AttributeError) as err:
        raise SinkholeError(f"{d.get('_path', 'a report')} is not a complete {REPORT} report ({err})") from None


# ---------- terminal ----------


def _num(x, kind: str = "") -> str:
    if x is None:
        return "n/a"
    if kind == "%":
        return pct(x)
    if kind == "x":
        return f"{x:.1f}x"
    if kind == "2":
        return f"{x:.2f}"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _pair(label: str, v: list, kind: str = "") -> str:
    a, b = v
    delta = ""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and kind != "":
        d = b - a
        delta = f"  ({'+' if d >= 0 else '-'}{_num(abs(d), kind)})"
    return f"  {label:<28}{_num(a, kind):>12}  ->  {_num(b, kind):<12}{delta}"


def _tokens(m: dict, what: str, fmt) -> list[str]:
    out = []
    for x in m["both"]:
        text = repr(x["a"]["text"]) + ("" if x["a"]["text"] == x["b"]["text"] else f" -> {x['b']['text']!r}")
        out.append(f"  pos {x['position']}  {text}: {fmt(x['a'])}  ->  {fmt(x['b'])}")
    out += [f"  pos {x['position']}  {x['text']!r}: {what} only in A ({fmt(x)})" for x in m["only_a"]]
    out += [f"  pos {x['position']}  {x['text']!r}: {what} only in B ({fmt(x)})" for x in m["only_b"]]
    return out


def render_compare(c: dict) -> str:
    lines = [f"A  {c['files'][0]}  ({c['models'][0]})", f"B  {c['files'][1]}  ({c['models'][1]})"]
    if c["kind"] == "eval":
        from sinkhole.eval.aggregate import METRICS, PERCENT

        lines.append(f"Prompts  {c['n_prompts'][0]} -> {c['n_prompts'][1]}")
        lines.append("Metrics (mean over prompts)")
        for k, v in c["metrics"].items():
            lines.append(_pair(METRICS.get(k, k), v, "%" if k in PERCENT else "x" if k == "spike_score" else "2"))
        ch = c["channels"]
        lines.append(
            f"Spike channels  {ch['a'] or 'none'} ({pct(ch['share'][0], 0) if ch['share'][0] is not None else 'n/a'})"
            f"  ->  {ch['b'] or 'none'} ({pct(ch['share'][1], 0) if ch['share'][1] is not None else 'n/a'})"
        )
        lines.append(_pair("Pearson r(length, sink mass)", c["length_vs_sink_mass_r"], "2"))
        return "\n".join(lines)
    lines.append(
        f"Tokens  {c['n_tokens'][0]} -> {c['n_tokens'][1]}"
        + ("  (same prompt)" if c["same_prompt"] else "  (different prompts)")
    )
    sp = c["spikes"]
    lines.append(
        f"Spike tokens  {sp['n'][0]} -> {sp['n'][1]}   "
        f"top score {sp['top_score'][0]:.1f}x -> {sp['top_score'][1]:.1f}x"
    )
    lines += _tokens(sp, "spike", lambda t: f"score {t['score']:.1f}x, channels {t['channels']}")
    sk = c["sinks"]
    lines.append(
        f"Sink tokens  {sk['n'][0]} -> {sk['n'][1]}   top sink #{sk['top'][0]['position']} "
        f"{pct(sk['top'][0]['attn_mass'])} -> #{sk['top'][1]['position']} {pct(sk['top'][1]['attn_mass'])}"
    )
    lines += _tokens(sk, "sink", lambda t: f"mass {pct(t['attn_mass'])}, rate {pct(t['sink_rate'], 0)}")
    ch = c["channels"]
    lines.append(
        f"Spike channels  {ch['a']} -> {ch['b']}   shared {ch['both']}, only A {ch['only_a']}, only B {ch['only_b']}"
    )
    h = c["heads"]
    if h["n_sink_heads"][0] is not None and h["n_sink_heads"][1] is not None:
        lines.append(
            f"Sink heads  {h['n_sink_heads'][0]} of {h['n_heads'][0]} -> {h['n_sink_heads'][1]} of {h['n_heads'][1]}"
            + (
                f"   started {len(h['started_sinking'])}, stopped {len(h['stopped_sinking'])}"
                if h["same_shape"]
                else "   (different layers x heads: not matched)"
            )
        )
        for x in (h.get("largest_changes") or [])[:5]:
            lines.append(f"  L{x['layer']} H{x['head']}  alpha on top sink {x['a']:.3f} -> {x['b']:.3f}")
    lines.append(_pair("Spike ∩ Sink (Jaccard)", c["jaccard"], "2"))
    lines.append(_pair("KV: attention on sink slots", c["kv"], "%"))
    return "\n".join(lines)


# ---------- HTML ----------


def _diff(a, b, kind: str) -> str:
    """B - A in the row's unit ('+1.2x', '-3.4%', '+2'), or '' where the values are not two numbers."""
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    if not numbers:
        return ""
    d = b - a
    return ("+" if d >= 0 else "-") + _num(abs(d), kind)


def side_by_side(c: dict) -> list[tuple[str, str, str, str]]:
    """(label, A, B, B - A) rows of the main numbers, formatted as the terminal formats them (the
    difference is '' where the row is not a number)."""
    rows = [("file", *c["files"], ""), ("model", *c["models"], "")]
    if c["kind"] == "eval":
        from sinkhole.eval.aggregate import METRICS, PERCENT

        raw = [("prompts", *c["n_prompts"], "")]
        raw += [
            (METRICS.get(k, k), a, b, "%" if k in PERCENT else "x" if k == "spike_score" else "2")
            for k, (a, b) in c["metrics"].items()
        ]
        raw.append(("Pearson r(length, sink mass)", *c["length_vs_sink_mass_r"], "2"))
        rows += [(label, _num(a, kind), _num(b, kind), _diff(a, b, kind)) for label, a, b, kind in raw]
        rows.insert(
            -1, ("spike channels (most common set)", c["channels"]["a"] or "none", c["channels"]["b"] or "none", "")
        )
        return rows
    sp, sk, h = c["spikes"], c["sinks"], c["heads"]
    top = [
        f"#{t['position']} {t['text']!r}: mass {pct(t['attn_mass'])}, rate {pct(t['sink_rate'], 0)}" for t in sk["top"]
    ]
    ch = c["channels"]
    heads = [f"{n} of {t}" if n is not None else "n/a" for n, t in zip(h["n_sink_heads"], h["n_heads"])]
    rows += [
        ("tokens", *c["n_tokens"], _diff(*c["n_tokens"], "")),
        ("spike tokens", *sp["n"], _diff(*sp["n"], "")),
        ("top spike score", *(_num(x, "x") for x in sp["top_score"]), _diff(*sp["top_score"], "x")),
        ("sink tokens", *sk["n"], _diff(*sk["n"], "")),
        ("top sink", *top, _diff(sk["top"][0]["attn_mass"], sk["top"][1]["attn_mass"], "%") + " mass"),
        ("spike channels", ch["a"] or "none", ch["b"] or "none", f"only A {ch['only_a']}, only B {ch['only_b']}"),
        ("sink heads", *heads, _diff(*h["n_sink_heads"], "") if h["same_shape"] else ""),  # other heads: no difference
        ("Spike ∩ Sink (Jaccard)", *(_num(x, "2") for x in c["jaccard"]), _diff(*c["jaccard"], "2")),
        ("KV: attention on sink slots", *(_num(x, "%") for x in c["kv"]), _diff(*c["kv"], "%")),
    ]
    return rows


def details(c: dict) -> list[str]:
    """What the side-by-side table leaves out, in the terminal's words: matched spike and sink tokens and
    the heads that changed most (reports); the per-category means (eval runs)."""
    if c["kind"] == "eval":
        from sinkhole.eval.aggregate import METRICS, PERCENT

        out = []
        for cat, v in c["per_category"].items():
            out.append(cat)
            out += [_pair(METRICS.get(k, k), ab, "%" if k in PERCENT else "x") for k, ab in v.items()]
        return out
    out = _tokens(c["spikes"], "spike", lambda t: f"score {t['score']:.1f}x, channels {t['channels']}")
    out += _tokens(c["sinks"], "sink", lambda t: f"mass {pct(t['attn_mass'])}, rate {pct(t['sink_rate'], 0)}")
    out += [
        f"  L{x['layer']} H{x['head']}  alpha on top sink {x['a']:.3f} -> {x['b']:.3f}"
        for x in (c["heads"].get("largest_changes") or [])[:TOP_HEADS]
    ]
    return [line.strip() for line in out]


def compare_html(c: dict) -> str:
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
    if c["kind"] == "report" and c["heads"].get("diff"):
        import plotly.offline

        from sinkhole.render.html import embed_json

        data = embed_json({"z": [[round(v, 4) for v in row] for row in c["heads"]["diff"]]})
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
<title>sinkhole compare: {esc(str(c["models"][0]))} vs {esc(str(c["models"][1]))}</title>
<style>body{{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#1d2330}}
table.t{{border-collapse:collapse;font-size:13px}}
table.t td,table.t th{{border:1px solid #dde1e8;padding:3px 10px;text-align:left}}
table.t th{{background:#f6f7f9}} pre{{background:#f6f7f9;padding:10px;font-size:12.5px;overflow-x:auto}}
.hint{{color:#5b6475}}
h2{{font-size:17px;border-bottom:1px solid #dde1e8}}</style></head>
<body><h1>sinkhole compare</h1>{rows}{fig}{script}</body></html>
"""
