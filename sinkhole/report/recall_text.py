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
        f"{'method':<26} {'KV':>6} {'recall':>7} {'vs dense':>9} {'1st occ.':>9} {'ppl text':>9} {'vs dense':>9} "
        f"{'seconds':>8}  full heads",
    ]
    for r in d["rows"]:
        rel = f"{r['recall'] / dense['recall']:.2f}x" if dense and dense["recall"] else "-"
        prel = f"{r['ppl_text'] / dense['ppl_text']:.3f}x" if dense else "-"
        heads = f"{r['detail']['retrieval_heads']}/{r['detail']['kv_heads']}" if r["detail"] else "all"
        lines.append(
            f"{r['label']:<26} {r['kv_share']:>6.0%} {r['recall']:>7.1%} {rel:>9} {r['recall_first']:>9.1%} "
            f"{r['ppl_text']:>9.2f} {prel:>9} {r['seconds']:>8.1f}  {heads}"
        )
    return "\n".join(lines)
