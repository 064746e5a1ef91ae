"""The terminal tables of `sinkhole quant`: calibration statistics (`stats`) and fake-quantized validation
(`validate`) results."""

from __future__ import annotations

from sinkhole.results.quant import QuantStats, QuantValidation


def render_stats(stats: QuantStats, top: int = 12) -> str:
    """The `top` Linear inputs by absmax: where the outliers are."""
    rows = sorted(stats.modules, key=lambda s: -s.absmax)[:top]
    lines = [
        f"Linear inputs of {stats.model.name} over {stats.n_sequences} sequences / {stats.n_tokens} tokens "
        f"(top {len(rows)} by absmax)",
        f"{'module':<36} {'absmax':>9} {'top ch':>6} {'x median':>9} {'|x|>=6':>8} {'tok ratio':>9} "
        f"{'outlier tok':>11}  positions",
    ]
    for s in rows:
        c = s.top_channel
        pos = ",".join(f"{p}:{n}" for p, n in list(s.outlier_positions.items())[:4])
        lines.append(
            f"{s.name:<36} {s.absmax:>9.1f} {c.channel:>6d} {c.ratio:>9.1f} {s.share_ge_6:>8.2%} "
            f"{s.token_ratio_max:>9.1f} {s.n_outlier_tokens:>11d}  {pos}"
        )
    hot = stats.hot_modules()
    lines.append(
        f"{len(hot)} module(s) see outlier tokens (token max > {stats.outlier_token_ratio:g}x median): "
        + (", ".join(hot) if hot else "none")
    )
    return "\n".join(lines)


def render_validation(result: QuantValidation) -> str:
    lines = [
        f"fake-quantized W8A8 perplexity on {result.n_heldout_sequences} held-out sequences "
        f"({result.n_heldout_tokens} predicted tokens)",
        f"{'scheme':<14} {'perplexity':>10} {'vs float':>9} {'beats naive':>11}  detail",
    ]
    for r in result.results:
        beats = "-" if r.beats_naive is None else ("yes" if r.beats_naive else "NO")
        lines.append(f"{r.scheme:<14} {r.perplexity:>10.3f} {r.delta_vs_float:>+9.3f} {beats:>11}  {r.detail}")
    return "\n".join(lines)


def render_hints_summary(hints: dict, paths: list) -> str:
    """A few lines for `quant --backend B --hints FILE` (the config itself is in the file): what was written,
    the config's settings (lists counted, with their first entries), the notes and the basis's rules.
    The whole hints, basis included, are what `quant --backend B` without --hints prints as JSON."""

    def short(v) -> str:
        if isinstance(v, (list, tuple)):  # a list of records by its first field (e.g. a channel id)
            head = ", ".join(str(next(iter(x.values()), "") if isinstance(x, dict) else x) for x in v[:3])
            return f"{len(v)}: {head}" + (", ..." if len(v) > 3 else "")
        if isinstance(v, dict):
            return f"{len(v)} " + ("entry" if len(v) == 1 else "entries")
        text = str(v)
        return text if len(text) <= 90 else text[:87] + "..."

    model = (hints.get("model") or {}).get("name", "?")
    basis = hints.get("basis", {})
    lines = [f"{hints['backend']} config for {model} (from {basis.get('source', '?')}): {', '.join(map(str, paths))}"]
    config = hints.get("config")
    if isinstance(config, dict):
        lines += [f"  {k}  {short(v)}" for k, v in config.items()]
    lines += [f"  note: {n}" for n in hints.get("notes", [])]
    lines += [f"  basis {k}: {short(v)}" for k, v in basis.items() if k != "source"]
    lines.append("  (the whole hints as JSON, basis included: the same command without --hints)")
    return "\n".join(lines)
