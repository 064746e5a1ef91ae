"""The terminal summary of `sinkhole vocab-sweep` (the typed `VocabSweep`, sinkhole.results.mechanism):
the share of the vocabulary that spikes alone at position 0, the score percentiles, and the first
exceptions."""

from __future__ import annotations

from sinkhole.render.analyze_text import pct
from sinkhole.results.mechanism import VocabSweep


def render_vocab_sweep(result: VocabSweep, model: str, limit: int = 20) -> str:
    """`model`: the model's name; `limit`: exceptions listed (the result holds up to 50)."""
    r, p = result, result.score_percentiles
    lines = [
        f"{model}: {r.n_spike} of {r.n_tokens} tokens ({pct(r.spike_share)}) spike "
        f"alone at position 0 (peak norm > {r.threshold:g} x in-context median "
        f"{r.reference_norm:.0f}; "
        f"{r.dtype}, {r.seconds:.1f} s, {r.tokens_per_second:.0f} tokens/s)",
        f"score percentiles: min {p['0']:.1f}  5% {p['5']:.1f}  median {p['50']:.1f}  95% {p['95']:.1f}  "
        f"max {p['100']:.1f}",
        f"exceptions ({r.exceptions_are}, {r.n_exceptions}):",
    ]
    lines += [f"  {e.id:>7}  {e.text!r:<24} score {e.score:.1f}" for e in r.exceptions[:limit]]
    return "\n".join(lines)
