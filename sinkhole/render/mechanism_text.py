"""The terminal summary of `sinkhole mechanism`: one line per link of the chain (targets, lifecycle, channels,
activation, amplifier, normalization, sink keys, interventions, vocabulary sweep), from the typed sections
(sinkhole.results.mechanism). html_mechanism draws the same sections as the page's section."""

from __future__ import annotations

from sinkhole.render.analyze_text import pct
from sinkhole.results.mechanism import Amplifier, Mechanism, NotApplicable


def _counts(d: dict, n: int) -> str:
    """{'L11.ffn': 16} -> 'L11.ffn (16 of 16 tokens)'."""
    return ", ".join(f"{k} ({v} of {n} tokens)" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"


def render_mechanism(m: Mechanism) -> str:
    """A short terminal summary of the mechanism sections (a MechanismResult is one)."""
    s, t, lcy, ch = m.summary, m.targets, m.lifecycle, m.channels
    who = "top-score tokens (no spike token passed the threshold)" if t.fallback else "spike tokens"
    lines = [
        f"Targets  {t.n} {who}; step-up layer {t.step_up_layer}; spike channels {t.spike_channels}",
        f"Summary  spike score {s.spike_score:.1f}x  top |h| {s.top_abs_over_median:.0f}x median  "
        f"top sink: rate {pct(s.top_sink_rate, 0)}, mass {pct(s.top_sink_attn_mass)}",
        f"Lifecycle  rises at {_counts(lcy.rise_counts, t.n)}  falls at {_counts(lcy.fall_counts, t.n)}  "
        f"plateau {lcy.plateau_blocks_mean:.1f} blocks (of {2 * len(ch.value_by_layer[0])})",
    ]
    lines.append(
        "Channels  "
        + "  ".join(
            f"{c}: {v:.0f}"
            + (f" (ratio {r:.3f}, cv over layers {cv:.3f})" if r is not None and cv is not None else "")
            for c, v, r, cv in zip(ch.channels, ch.plateau_value, ch.ratio_to_main, ch.ratio_cv_across_layers)
            if v is not None
        )
    )
    a = m.activation
    if isinstance(a, NotApplicable):
        lines.append(f"Activation / amplifier  {a.reason}")
    elif a.spike.cos is not None:
        lines.append(
            f"Activation ({a.activation})  spike tokens: cos {a.spike.cos:.3f}, norm ratio "
            f"{a.spike.norm_ratio:.3f}   others: cos {a.other.cos:.3f}, "
            f"norm ratio {a.other.norm_ratio:.3f}"
        )
    amp = m.amplifier
    if isinstance(amp, Amplifier):
        for c, gain in zip(amp.channels, amp.post_block_gain or []):
            lines.append(
                f"Amplifier ch {c.channel}  ||U_k||_F {c.fro_over_median:.1f}x median "
                f"(rank {c.fro_rank} of {amp.n_channels})  "
                f"lambda1/|lambda2| {c.dominance:.1f}  |cos(x, s*)| spike {c.alignment_spike or 0:.2f} "
                f"vs others {c.alignment_other or 0:.2f}"
                + (f"  post-block gain {gain:.3g}x" if gain is not None and abs(gain - 1) > 1e-3 else "")
            )
    n = m.normalization
    if isinstance(n, NotApplicable):
        lines.append(f"Normalization  {n.reason}")
    else:
        lines.append(
            f"Normalization  spike-channel share of post-norm mass: before {n.before.spike_sparsity:.2f}, "
            f"after {n.after.spike_sparsity:.2f} (others {n.after.other_sparsity:.2f})"
        )
    k = m.sink_keys
    if k.mean_sink_pr is not None:
        lines.append(
            f"Sink keys  participation ratio {k.mean_sink_pr:.2f} (sink) vs {k.mean_other_pr:.2f} "
            f"(others, n={k.n_sink_keys})  sink heads {k.n_sink_heads}/{k.n_heads}"
        )
    if m.interventions is not None:
        iv = m.interventions
        lines.append(
            f"Perplexity ({iv.n_tokens} tokens)  "
            + "  ".join(f"{name} {v:,.2f}" if v is not None else f"{name} n/a" for name, v in iv.perplexity.items())
        )
    if m.vocab_sweep is not None:
        v = m.vocab_sweep
        lines.append(
            f"Vocabulary sweep  {pct(v.spike_share)} of {v.n_tokens} tokens spike alone at position 0 "
            f"({v.n_exceptions} exceptions: {v.exceptions_are})"
        )
    return "\n".join(lines)
