"""Terminal rendering of a report dict (the same dict the JSON file holds)."""

from __future__ import annotations


def _tok(text: str) -> str:
    return repr(text) if len(text) <= 24 else repr(text[:21] + "...")


def render_analysis(r: dict) -> str:
    m = r["model"]
    lines = [f"Model  {m['name']}  ({m['architecture']}, {m['n_layers']} layers, {m['n_heads']} heads, "
             f"{m['n_kv_heads']} KV heads, d_model {m['d_model']}, {m['dtype']})  tokens {len(r['tokens'])}"]
    sp = r["spikes"]
    lines.append(f"Spike tokens  {len(sp['tokens'])} found (threshold {sp['threshold']:.1f}x)")
    for s in sp["tokens"]:
        lines.append(
            f"  pos {s['position']}  {_tok(s['text'])}  score {s['score']:.1f}x  max |h| {abs(s['top_value']):.0f} "
            f"(layer {s['layer']}, channel {s['channel']})  channels {s['channels']}"
        )
        lines.append(f"    rises at layer {s['step_up_layers']}, falls at layer {s['step_down_layers']}")
    sk = r["sinks"]
    lines.append(f"Sink tokens  {len(sk['tokens'])} found (epsilon {sk['epsilon']}, sink rate >= {sk['min_sink_rate']:.0%})")
    for s in sk["tokens"]:
        lines.append(f"  pos {s['position']}  {_tok(s['text'])}  attention mass {s['attn_mass']:.1%}  "
                     f"sink rate {s['sink_rate']:.0%} of heads")
    if not sk["tokens"]:
        top = sk["top"]
        lines.append(f"  (top token by mass: pos {top['position']} {_tok(top['text'])} "
                     f"mass {top['attn_mass']:.1%}, sink rate {top['sink_rate']:.0%})")
    j = r["overlap"]["jaccard"]
    lines.append(f"Spike ∩ Sink  Jaccard {'n/a (no spike or sink tokens)' if j is None else f'{j:.2f}'}")
    kv = r["kv"]
    lines.append(f"KV impact  sinks take {kv['sink_attention_share']:.1%} of attention from "
                 f"{kv['n_sink_slots']} of {kv['n_slots']} KV slots")
    return "\n".join(lines)
