"""The terminal comparison of two reports or two eval runs (`sinkhole compare`), from the typed
comparison (sinkhole.results.compare; sinkhole.eval.comparison builds it). compare_page draws the
same numbers, in the same formats, as one HTML page."""

from __future__ import annotations

from sinkhole.render.analyze_text import pct
from sinkhole.results.compare import EvalComparison, ReportComparison, SinkChanges, SpikeChanges
from sinkhole.results.eval import METRICS, PERCENT


def num(x, kind: str = "") -> str:
    """A value as the comparison prints it: kind '%' a share, 'x' a spike score, '2' two decimals."""
    if x is None:
        return "n/a"
    if kind == "%":
        return pct(x)
    if kind == "x":
        return f"{x:.1f}x"
    if kind == "2":
        return f"{x:.2f}"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def metric_kind(key: str) -> str:
    """The `num` kind of an eval metric."""
    return "%" if key in PERCENT else "x" if key == "spike_score" else "2"


def pair(label: str, v: list, kind: str = "") -> str:
    """'  label   A  ->  B  (+delta)': one row of A and B's values."""
    a, b = v
    delta = ""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and kind != "":
        d = b - a
        delta = f"  ({'+' if d >= 0 else '-'}{num(abs(d), kind)})"
    return f"  {label:<28}{num(a, kind):>12}  ->  {num(b, kind):<12}{delta}"


def spike_values(t) -> str:
    return f"score {t.score:.1f}x, channels {t.channels}"


def sink_values(t) -> str:
    return f"mass {pct(t.attn_mass)}, rate {pct(t.sink_rate, 0)}"


def token_lines(m: SpikeChanges | SinkChanges, what: str, fmt) -> list[str]:
    """The matched tokens (A -> B) and those in one report only, one line each."""
    out = []
    for x in m.both:
        text = repr(x.a.text) + ("" if x.a.text == x.b.text else f" -> {x.b.text!r}")
        out.append(f"  pos {x.position}  {text}: {fmt(x.a)}  ->  {fmt(x.b)}")
    out += [f"  pos {x.position}  {x.text!r}: {what} only in A ({fmt(x)})" for x in m.only_a]
    out += [f"  pos {x.position}  {x.text!r}: {what} only in B ({fmt(x)})" for x in m.only_b]
    return out


def head_lines(c: ReportComparison, n: int) -> list[str]:
    """The n heads whose alpha on the top sink changed most (same layers x heads only)."""
    return [
        f"  L{x.layer} H{x.head}  alpha on top sink {x.a:.3f} -> {x.b:.3f}"
        for x in (c.heads.largest_changes or [])[:n]
    ]


def render_compare(c: ReportComparison | EvalComparison) -> str:
    lines = [f"A  {c.files[0]}  ({c.models[0]})", f"B  {c.files[1]}  ({c.models[1]})"]
    if isinstance(c, EvalComparison):
        lines.append(f"Prompts  {c.n_prompts[0]} -> {c.n_prompts[1]}")
        lines.append("Metrics (mean over prompts)")
        for k, v in c.metrics.items():
            lines.append(pair(METRICS.get(k, k), v, metric_kind(k)))
        ch = c.channels
        lines.append(
            f"Spike channels  {ch.a or 'none'} ({pct(ch.share[0], 0) if ch.share[0] is not None else 'n/a'})"
            f"  ->  {ch.b or 'none'} ({pct(ch.share[1], 0) if ch.share[1] is not None else 'n/a'})"
        )
        lines.append(pair("Pearson r(length, sink mass)", c.length_vs_sink_mass_r, "2"))
        return "\n".join(lines)
    lines.append(
        f"Tokens  {c.n_tokens[0]} -> {c.n_tokens[1]}"
        + ("  (same prompt)" if c.same_prompt else "  (different prompts)")
    )
    sp = c.spikes
    lines.append(f"Spike tokens  {sp.n[0]} -> {sp.n[1]}   top score {sp.top_score[0]:.1f}x -> {sp.top_score[1]:.1f}x")
    lines += token_lines(sp, "spike", spike_values)
    sk = c.sinks
    lines.append(
        f"Sink tokens  {sk.n[0]} -> {sk.n[1]}   top sink #{sk.top[0].position} "
        f"{pct(sk.top[0].attn_mass)} -> #{sk.top[1].position} {pct(sk.top[1].attn_mass)}"
    )
    lines += token_lines(sk, "sink", sink_values)
    ch = c.channels
    lines.append(f"Spike channels  {ch.a} -> {ch.b}   shared {ch.both}, only A {ch.only_a}, only B {ch.only_b}")
    h = c.heads
    if h.n_sink_heads[0] is not None and h.n_sink_heads[1] is not None:
        lines.append(
            f"Sink heads  {h.n_sink_heads[0]} of {h.n_heads[0]} -> {h.n_sink_heads[1]} of {h.n_heads[1]}"
            + (
                f"   started {len(h.started_sinking)}, stopped {len(h.stopped_sinking)}"
                if h.same_shape
                else "   (different layers x heads: not matched)"
            )
        )
        lines += head_lines(c, 5)
    lines.append(pair("Spike ∩ Sink (Jaccard)", c.jaccard, "2"))
    lines.append(pair("KV: attention on sink slots", c.kv, "%"))
    return "\n".join(lines)
