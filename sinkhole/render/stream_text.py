"""The terminal table of `sinkhole stream`: one row per method, perplexity over all scored positions,
past the cache, and at the recompute sample (`sinkhole.results.stream.StreamResult`)."""

from __future__ import annotations

from sinkhole.results.stream import StreamResult


def render_table(result: StreamResult) -> str:
    """Plain-text table of a `StreamResult`'s summary rows."""

    def f(v):
        return "-" if v is None else (f"{v:.2f}" if v < 1000 else f"{v:.0f}")

    n_sample = len(result.sample_positions)
    lines = [
        f"{result.model}: {result.n_tokens} tokens of {result.text_source}, "
        f"cache {result.cache_size} keys per global layer, {n_sample} recompute samples",
        f"{'method':<28} {'slots':>5} {'scored':>6} {'ppl':>9} {'ppl t>=cache':>13} {'ppl @sample':>12}",
    ]
    for r in result.summary:
        slots = "all" if r.slots is None else str(r.slots)
        label = r.label + (f" {result.methods[r.method].sink_positions}" if r.method == "profile" else "")
        # the recompute reference is scored at the sample alone: its number stands in that column only,
        # not beside the others' perplexities over every position
        sample_only = r.method == "recompute"
        ppl, past = ("", "") if sample_only else (f(r.ppl), f(r.ppl_past_cache))
        lines.append(f"{label:<28} {slots:>5} {r.scored:>6} {ppl:>9} {past:>13} {f(r.ppl_sample):>12}")
    lines.append(
        f"ppl, ppl t>=cache: each method over the positions it scored; ppl @sample: every method at the same "
        f"{n_sample} sample positions, the only column with the recomputed reference"
    )
    return "\n".join(lines)
