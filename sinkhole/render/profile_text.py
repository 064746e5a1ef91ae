"""The terminal summary of a SinkProfile (`sinkhole profile`, `sinkhole profile --show`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sinkhole.render.analyze_text import chat_label, pct, plural

if TYPE_CHECKING:
    from sinkhole.results.sink_profile import SinkProfile


def render_profile(pr: SinkProfile) -> str:
    """Model and prompts, the sink rule, pinned slots, the top sink tokens, spike channels (by |h|), step-up
    and step-down layers, sink heads, and the lowest per-head streaming scores when the profile has them."""
    m = pr.model
    lines = [
        f"Profile  {m.get('name')}  ({m.get('architecture')}, {m.get('n_layers')} layers)  "
        f"from {plural(pr.prompts.get('count') or 0, 'prompt')} ({pr.prompts.get('source')}, "
        f"{chat_label(pr.settings.get('chat'))})",
        f"sink rule  {pr.sink_rule.get('description')}",
        f"pinned KV slots  {pr.pinned_slots}   sink positions {pr.sink_positions}",
    ]
    for t in pr.sink_tokens[:6]:
        where = "anywhere" if t["position"] is None else f"pos {t['position']}"
        lines.append(
            f"  {where}  {t['text']!r}  mass {pct(t['attn_mass'])}  sink rate {pct(t['sink_rate'], 0)}  "
            f"in {pct(t['frequency'], 0)}"
        )
    ch = ", ".join(
        f"{c['channel']} ({c['typical_value']:+.0f}, {pct(c['frequency'], 0)})"
        for c in sorted(pr.spike_channels, key=lambda c: -abs(c["typical_value"]))[:8]
    )  # by |h|, as everywhere
    lines.append(f"spike channels  {ch or 'none'}")
    lines.append(f"step-up layers {pr.step_up_layers}  step-down layers {pr.step_down_layers}")
    lines.append(f"sink heads  {len(pr.sink_heads)} (layer, head) pairs")
    st = pr.streaming
    if st:
        flat = sorted((v, l, h) for l, row in enumerate(st["scores"]) for h, v in enumerate(row))
        low = ", ".join(f"L{l}H{h} {v:.2f}" for v, l, h in flat[:6])
        lines.append(
            f"streaming scores  (share on {st['n_sink']} sinks + last {st['window']} keys, "
            f"{len(flat)} KV heads)  mean {sum(v for v, _, _ in flat) / len(flat):.2f}  lowest: {low}"
        )
    loss = (st or {}).get("loss")
    parts = [("", loss)] + ([("answers ", loss["answers"])] if loss and loss.get("answers") else [])
    for what, part in parts if loss else ():
        for state in ("stream", "select"):
            if not part.get(state):
                continue
            top = sorted(((v, l, h) for l, row in enumerate(part[state]) for h, v in enumerate(row)), reverse=True)
            worst = ", ".join(f"L{l}H{h} {v:+.3f}" for v, l, h in top[:4])
            dense = f", dense {part['dense_nll']:.3f}" if isinstance(part.get("dense_nll"), (int, float)) else ""
            head = f"{what}loss delta {state:<6}  (nats, that head alone{dense})"
            lines.append(f"{head}  most: {worst}")
    return "\n".join(lines)
