"""The terminal table of `sinkhole stream --recall`: one row per cache method, each with its ratios to
dense (`sinkhole.cache.recall.RecallResult.to_dict()`; the methods and numbers are defined there)."""

from __future__ import annotations


def render_recall(d: dict) -> str:
    """Plain-text table of `RecallResult.to_dict()`, with each method's ratios to dense."""
    dense = next((r for r in d["rows"] if r["method"] == "dense"), None)  # ratios only when dense ran
    lines = [
        f"{d['model']}: copy recall over {d['n_tokens']}-token streams ({len(d['settings']['seeds'])} x "
        f"{d['settings']['n_spans']} spans of {d['settings']['span']} random tokens, repeated "
        f"{d['spans'][0][0][1] - d['spans'][0][0][0]} tokens later); budget {d['budget']:.0%} of dense KV; "
        f"uniform caches {d['uniform_cache']} keys/head, head-aware {d['n_sink']} sinks + "
        f"{d['settings'].get('local_sinks', 0)} local sinks + {d['window']}",
        f"{'method':<26} {'KV slots':>8} {'KV bytes':>8} {'recall':>7} {'vs dense':>9} {'1st occ.':>9} "
        f"{'ppl text':>9} {'vs dense':>9} {'seconds':>8}  full heads",
    ]
    spreads = []
    for r in d["rows"]:
        rel = f"{r['recall'] / dense['recall']:.2f}x" if dense and dense["recall"] else "-"
        prel = f"{r['ppl_text'] / dense['ppl_text']:.3f}x" if dense else "-"
        heads = f"{r['detail']['retrieval_heads']}/{r['detail']['kv_heads']}" if r["detail"] else "all"
        seeds = r["detail"].get("seeds")
        if seeds:
            heads += f" (mean of {len(seeds)} seeds)"
            lo, hi = r["detail"]["recall_range"]
            plo, phi = r["detail"]["ppl_range"]
            spreads.append(
                f"{r['label']}: {len(seeds)} seeds ({', '.join(str(x['seed']) for x in seeds)}): recall mean "
                f"{r['recall']:.1%}, range {lo:.1%}-{hi:.1%}; ppl text mean {r['ppl_text']:.2f}, "
                f"range {plo:.2f}-{phi:.2f}"
            )
        share = r.get("bytes_share")  # absent from results written before budgets were in bytes
        nbytes = f"{share:>8.0%}" if share is not None else f"{'-':>8}"
        lines.append(
            f"{r['label']:<26} {r['kv_share']:>8.0%} {nbytes} {r['recall']:>7.1%} {rel:>9} {r['recall_first']:>9.1%} "
            f"{r['ppl_text']:>9.2f} {prel:>9} {r['seconds']:>8.1f}  {heads}"
        )
    return "\n".join(lines + spreads)
