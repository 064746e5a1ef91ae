"""The terminal table of `sinkhole stream --recall`: one row per cache method, each with its ratios to
dense (`sinkhole.results.stream_recall.RecallResult`; the methods and numbers are defined in
sinkhole.cache.recall)."""

from __future__ import annotations

from sinkhole.results.stream_recall import RecallResult


def render_recall(result: RecallResult) -> str:
    """Plain-text table of a `RecallResult`, with each method's ratios to dense."""
    dense = next((r for r in result.rows if r.method == "dense"), None)  # ratios only when dense ran
    s = result.settings
    lines = [
        f"{result.model}: copy recall over {result.n_tokens}-token streams ({len(s.seeds)} x "
        f"{s.n_spans} spans of {s.span} random tokens, repeated {result.distance} tokens later); budget "
        f"{result.budget:.0%} of dense KV; uniform caches {result.uniform_cache} keys/head, head-aware "
        f"{result.n_sink} sinks + {s.local_sinks} local sinks + {result.window}",
        f"{'method':<26} {'KV slots':>8} {'KV bytes':>8} {'recall':>7} {'vs dense':>9} {'1st occ.':>9} "
        f"{'ppl text':>9} {'vs dense':>9} {'seconds':>8}  full heads",
    ]
    spreads = []
    for r in result.rows:
        rel = f"{r.recall / dense.recall:.2f}x" if dense and dense.recall else "-"
        prel = f"{r.ppl_text / dense.ppl_text:.3f}x" if dense else "-"
        heads = r.detail.full_heads
        seeds = r.detail.seeds
        if seeds:
            heads += f" (mean of {len(seeds)} seeds)"
            lo, hi = r.detail.recall_range
            plo, phi = r.detail.ppl_range
            spreads.append(
                f"{r.label}: {len(seeds)} seeds ({', '.join(str(x.seed) for x in seeds)}): recall mean "
                f"{r.recall:.1%}, range {lo:.1%}-{hi:.1%}; ppl text mean {r.ppl_text:.2f}, "
                f"range {plo:.2f}-{phi:.2f}"
            )
        lines.append(
            f"{r.label:<26} {r.kv_share:>8.0%} {r.bytes_share:>8.0%} {r.recall:>7.1%} {rel:>9} "
            f"{r.recall_first:>9.1%} {r.ppl_text:>9.2f} {prel:>9} {r.seconds:>8.1f}  {heads}"
        )
    return "\n".join(lines + spreads)
