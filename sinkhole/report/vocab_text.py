"""The terminal summary of `sinkhole vocab-sweep` (the dict sinkhole.analysis.mechanism.vocab_sweep returns,
with its "model" name): the share of the vocabulary that spikes alone at position 0, the score
percentiles, and the first exceptions."""

from __future__ import annotations

from sinkhole.report.analyze_text import pct


def render_vocab_sweep(result: dict, limit: int = 20) -> str:
    """`limit`: exceptions listed (the result holds up to 50)."""
    p = result["score_percentiles"]
    lines = [
        f"{result['model']}: {result['n_spike']} of {result['n_tokens']} tokens ({pct(result['spike_share'])}) spike "
        f"alone at position 0 (peak norm > {result['threshold']:g} x in-context median "
        f"{result['reference_norm']:.0f}; "
        f"{result['dtype']}, {result['seconds']:.1f} s, {result['tokens_per_second']:.0f} tokens/s)",
        f"score percentiles: min {p['0']:.1f}  5% {p['5']:.1f}  median {p['50']:.1f}  95% {p['95']:.1f}  "
        f"max {p['100']:.1f}",
        f"exceptions ({result['exceptions_are']}, {result['n_exceptions']}):",
    ]
    lines += [f"  {e['id']:>7}  {e['text']!r:<24} score {e['score']:.1f}" for e in result["exceptions"][:limit]]
    return "\n".join(lines)
