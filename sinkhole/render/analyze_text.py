"""Terminal rendering of a `Report` (sinkhole.results.report; a JSON dict is read back into one first)."""

from __future__ import annotations

from sinkhole.results.report import KV, LearnedSinks, Report


def as_report(r: Report | dict) -> Report:
    """The typed report; a dict (a JSON file read back) is converted at this edge."""
    return r if isinstance(r, Report) else Report.from_dict(r)


def plural(n: int, word: str) -> str:
    """'1 distinct set', '2 distinct sets'."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def chat_label(chat) -> str:
    """The run's chat setting in words (run.json holds True, False, or None: the tokenizer decides)."""
    return {True: "chat template applied", False: "no chat template"}.get(
        chat, "chat template if the tokenizer has one"
    )


def pct(x: float | None, digits: int = 1) -> str:
    """A share as a percentage that never rounds a partial share to 100% or a non-zero one to 0%:
    2047 of 2048 prints as 99.95%, not 100.0%."""
    if x is None:
        return "n/a"
    s = f"{100 * x:.{digits}f}%"
    for more in range(digits + 1, digits + 6):
        if not ((0 < x < 1 and float(s[:-1]) in (0.0, 100.0)) or (x > 0 and float(s[:-1]) == 0.0)):
            break
        s = f"{100 * x:.{more}f}%"
    return s


def concentration(kv: KV) -> float | None:
    """How many times an average KV slot's share of attention the sink slots take (None without sinks)."""
    if not kv.n_sink_slots or not kv.sink_slot_share:
        return None
    return kv.sink_attention_share / kv.sink_slot_share


def _tok(text: str) -> str:
    return repr(text) if len(text) <= 24 else repr(text[:21] + "...")


def _ranges(xs: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, start = [], None
    for i, x in enumerate(xs):
        if start is None:
            start = x
        if i + 1 == len(xs) or xs[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ", ".join(out)


def layout_line(r: Report) -> str:
    """How the model was read: norm placement, which layers are attention, how attention was measured."""
    m, layers = r.model, r.layers
    kinds = layers.kinds or []
    parts = [f"{m.norm_style}-norm"]
    others: dict[str, list[int]] = {}
    for i, k in enumerate(kinds):
        if k != "attention":
            others.setdefault(k, []).append(i)
    if others:
        att = layers.attention
        parts.append(
            f"attention layers {_ranges(att)}; "
            + "; ".join(f"{k} layers {_ranges(v)} (no attention statistics)" for k, v in others.items())
        )
    if m.attention_path != "interface":
        parts.append("attention from eager output_attentions")
    parts.append(f"discovery {m.discovery}")
    return "Layout  " + ", ".join(parts)


def learned_sinks_line(ls: LearnedSinks) -> str:
    mx = ls.max
    top = ls.top_token_sink
    return (
        f"Learned sinks  absorb {ls.mean_share:.1%} of attention (mean over layers and heads; "
        f"max {mx['share']:.1%} at layer {mx['layer']}, head {mx['head']}); token sink pos {top['position']} "
        f"gets {_nanmean(top['alpha']):.1%}"
    )


def _nanmean(rows) -> float:
    vals = [v for row in rows for v in row if v is not None and v == v]
    return sum(vals) / len(vals) if vals else float("nan")


def render_analysis(r: Report | dict) -> str:
    r = as_report(r)
    m = r.model
    lines = [
        f"Model  {m.name}  ({m.architecture}, {m.n_layers} layers, {m.n_heads} heads, "
        f"{m.n_kv_heads} KV heads, d_model {m.d_model}, {m.dtype})  tokens {len(r.tokens)}",
        layout_line(r),
    ]
    sp = r.spikes
    lines.append(f"Spike tokens  {len(sp.tokens)} found (threshold {sp.threshold:.1f}x)")
    scores = sp.per_token_score or []
    if not sp.tokens and scores and any(v is not None for v in scores):
        t = max(range(len(scores)), key=lambda i: -1 if scores[i] is None else scores[i])
        lines.append(f"  (top score: pos {t} {_tok(r.tokens[t].text)} score {scores[t]:.1f}x, below the threshold)")
    for s in sp.tokens:
        lines.append(
            f"  pos {s.position}  {_tok(s.text)}  score {s.score:.1f}x  max |h| {abs(s.top_value):.0f} "
            f"(layer {s.layer}, channel {s.channel})  channels {s.channels}"
        )
        lines.append(f"    rises at layer {s.step_up_layers}, falls at layer {s.step_down_layers}")
    sk = r.sinks
    lines.append(f"Sink tokens  {len(sk.tokens)} found (epsilon {sk.epsilon}, sink rate >= {sk.min_sink_rate:.0%})")
    for s in sk.tokens:
        lines.append(
            f"  pos {s.position}  {_tok(s.text)}  attention mass {pct(s.attn_mass)}  "
            f"sink rate {pct(s.sink_rate, 0)} of heads"
        )
    if not sk.tokens:
        top = sk.top
        lines.append(
            f"  (top token by mass: pos {top.position} {_tok(top.text)} "
            f"mass {pct(top.attn_mass)}, sink rate {pct(top.sink_rate, 0)})"
        )
    j = r.overlap.jaccard
    lines.append(f"Spike ∩ Sink  Jaccard {'n/a (no spike or sink tokens)' if j is None else f'{j:.2f}'}")
    if r.learned_sinks:
        lines.append(learned_sinks_line(r.learned_sinks))
    kv = r.kv
    lines.append(
        f"KV impact  sinks take {pct(kv.sink_attention_share)} of attention from "
        f"{kv.n_sink_slots} of {kv.n_slots} KV slots"
        + (f" ({c:.0f}x an average slot)" if (c := concentration(kv)) else "")
    )
    return "\n".join(lines)
