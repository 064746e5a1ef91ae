"""The terminal table of `sinkhole stream`: one row per method, perplexity over all scored positions,
past the cache, and at the recompute sample (`sinkhole.cache.stream_eval.StreamResult.to_dict()`)."""

from __future__ import annotations


def render_table(result: dict) -> str:
    """Plain-text table of `StreamResult.to_dict()`."""

    def f(v):
        return "-" if v is None else (f"{v:.2f}" if v < 1000 else f"{v:.0f}")

    lines = [
        f"{result['model']}: {result['n_tokens']} tokens of {result['text_source']}, "
        f"cache {result['cache_size']} keys per global layer, {len(result['sample_positions'])} recompute samples",
        f"{'method':<28} {'slots':>5} {'scored':>6} {'ppl':>9} {'ppl t>=cache':>13} {'ppl @sample':>12}",
    ]
    for r in result["summary"]:
        slots = "all" if r["slots"] is None else str(r["slots"])
        label = r["label"] + (
            f" {result['methods'][r['method']]['sink_positions']}" if r["method"] == "profile" else ""
        )
        lines.append(
            f"{label:<28} {slots:>5} {r['scored']:>6} {f(r['ppl']):>9} {f(r['ppl_past_cache']):>13} "
            f"{f(r['ppl_sample']):>12}"
        )
    return "\n".join(lines)
