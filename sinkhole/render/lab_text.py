"""The tables of a lab run (`sinkhole lab`), as rows of strings: one row per variant (mean +- sd over
seeds of its last checkpoints), one per run, one per paper claim. `render_table` sets them as terminal
text; lab_page sets the same rows as HTML tables."""

from __future__ import annotations

import math

from sinkhole.results.lab import LabResult
from sinkhole.results.lab_claims import METRICS, Stat

VARIANT_HEADER = ["variant", "seeds", "loss", "copy", *METRICS.values(), "sink from", "spike from", "wall (seeds)"]
RUN_HEADER = ["run", "loss", "copy", "sink mass", "rate", "detected", "share@0", "attn/q", "spike", "top|h|", "time"]
CLAIM_HEADER = ["variant", "claim", "metric", "paper", "baseline", "variant (ours)", "verdict"]


def _pm(stat: Stat, pct: bool = False, x: bool = False) -> str:
    if stat.n == 0 or math.isnan(stat.mean):
        return "-"
    if pct:
        return f"{stat.mean:.0%} ± {stat.sd:.0%}" if stat.n > 1 else f"{stat.mean:.0%}"
    unit = "x" if x else ""
    nd = 1 if x else 3
    return f"{stat.mean:.{nd}f}{unit} ± {stat.sd:.{nd}f}" if stat.n > 1 else f"{stat.mean:.{nd}f}{unit}"


def _onset(steps: list) -> str:
    """Per-seed onset steps as 'median (k/n seeds)', or 'never'."""
    hit = sorted(s for s in steps if s is not None)
    if not hit:
        return "never"
    med = hit[len(hit) // 2]
    return f"{med}" if len(hit) == len(steps) else f"{med} ({len(hit)}/{len(steps)})"


def variant_rows(result: LabResult) -> list[list[str]]:
    summary = result.summary()
    rows = []
    runs_by: dict[str, list] = {}
    for v in result.variants:
        runs_by.setdefault(v.name, []).append(v)
    for name, runs in runs_by.items():
        st = summary.variants.get(name)
        done = [r for r in runs if r.finished and r.final is not None]
        if st is None or not done:
            rows.append([name, f"0/{len(runs)}"] + ["-"] * (len(VARIANT_HEADER) - 2))
            continue
        acc = [r.final.copy_accuracy for r in done if r.final.copy_accuracy is not None]
        on = summary.onsets[name]
        rows.append(
            [
                name,
                f"{len(done)}" + ("" if len(done) == len(runs) else f"/{len(runs)}"),
                f"{sum(r.final.eval_loss for r in done) / len(done):.3f}",
                f"{sum(acc) / len(acc):.2f}" if acc else "-",
                _pm(st["spike_score"], x=True),
                _pm(st["top_ratio"], x=True),
                _pm(st["sink_mass"]),
                _pm(st["sink_rate"], pct=True),
                _onset(on.sink),
                _onset(on.spike),
                f"{sum(r.seconds for r in done):.0f}s",
            ]
        )
    return rows


def run_rows(result: LabResult) -> list[list[str]]:
    rows = []
    for v in result.variants:
        f = v.final
        if f is None:
            rows.append([v.label] + ["-"] * (len(RUN_HEADER) - 1))
            continue
        rows.append(
            [
                v.label + ("" if v.finished else "*"),
                f"{f.eval_loss:.3f}",
                "-" if f.copy_accuracy is None else f"{f.copy_accuracy:.2f}",
                f"{f.sink_mass:.3f}",
                f"{f.sink_rate:.0%}",
                f"{f.sink_detected:.0%}",
                f"{f.first_share:.3f}",
                f"{f.attn_total:.2f}",
                f"{f.spike_score:.1f}x",
                f"{f.top_ratio:.1f}x",
                f"{v.seconds:.0f}s",
            ]
        )
    return rows


def claim_rows(result: LabResult) -> list[list[str]]:
    rows = []
    for c in result.summary().claims:
        fmt = dict(pct=c.metric == "sink_rate", x=c.metric in ("spike_score", "top_ratio"))
        verdict = c.verdict + (f" ({c.why})" if c.why else "")
        rows.append(
            [
                c.variant,
                c.text,
                f"{METRICS[c.metric]} {c.direction}",
                c.paper,
                "-" if c.baseline is None else _pm(c.baseline, **fmt),
                "-" if c.ours is None else _pm(c.ours, **fmt),
                verdict,
            ]
        )
    return rows


def headline(result: LabResult) -> str:
    s = result.settings
    m, t, d = s.model, s.train, s.data
    seeds = s.seeds
    return (
        f"{m['num_hidden_layers']} layer(s), d_model {m['hidden_size']}, {m['num_attention_heads']} heads x "
        f"{m['head_dim']}, {m.get('ffn', 'swiglu')} FFN, {d['task']} (vocab {d['vocab_size']}, "
        f"{d['seq_len']} tokens), "
        f"{t['steps']} steps x {t['batch_size']} sequences, lr {t['lr']:g}, weight decay {t['weight_decay']:g}, "
        + (f"seeds {', '.join(map(str, seeds))}" if seeds else f"seed {t['seed']}")
    )


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    all_rows = [header] + rows
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in all_rows
    ]


NOTES = [
    "Position 0 = the start token (the first ordinary token for no-bos); last checkpoint; mean ± sd over seeds",
    "(each seed's number is itself a mean over the probe sequences). spike score: peak residual norm of position 0",
    "over the median token's (the detector fires above the threshold); top |h|: its largest |h| over the median",
    "token's largest |h|; sink mass: mean alpha on position 0 over layers and heads; sink rate: heads with",
    "alpha > epsilon; sink from / spike from: first step at which the detector reports position 0 (median over",
    "seeds; (k/n) = only k seeds ever). Verdict rule: sinkhole.lab.claims (2 pooled sd).",
]


def render_table(result: LabResult, runs: bool = False) -> str:
    """The terminal tables: per variant (and per run with `runs`), then the claims with their verdicts."""
    lines = [headline(result), *_table(VARIANT_HEADER, variant_rows(result))]
    if runs:
        lines += ["", *_table(RUN_HEADER, run_rows(result))]
    lines += ["", *_table(CLAIM_HEADER[:1] + CLAIM_HEADER[2:], [r[:1] + r[2:] for r in claim_rows(result)]), *NOTES]
    return "\n".join(lines)
