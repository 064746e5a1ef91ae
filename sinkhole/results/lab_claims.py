"""The paper's claims as data, statistics over seeds, and the rule that gives each claim a verdict.

Statistics: for each variant, the last checkpoint of each seed gives one number per metric; `Stat`
holds their mean, sample standard deviation (ddof 1; 0 with one seed) and count.

The verdict rule (one rule for every claim; k = 2):
- the difference d = mean(variant) - mean(baseline); pooled sd s = sqrt((sd_b^2 + sd_v^2) / 2).
- "lower" / "higher": supported when d is beyond k s in the claimed direction, contradicted when
  it is beyond k s in the other, inconclusive otherwise.
- "kept" (the variant keeps what the baseline has): contradicted when d < -k s; inconclusive when
  k s is at least half the baseline's mean (too noisy, or nothing to keep); supported otherwise.
- the margin k s is at least 1% of the baseline's mean (RESOLUTION), so that seeds that agree
  exactly (sd 0) do not turn a rounding difference into a verdict.
- inconclusive with fewer than 2 seeds on either side (no spread to compare against).
- untestable: a spike claim when the baseline's mean spike score is below the detector's
  threshold (there is no spike to remove), and any claim whose variant or baseline did not run.

Which position: every metric is about position 0 (the start token; the first ordinary token when
the variant has none), as defined in `sinkhole.lab.train`.

The paper's numbers (`Claim.paper`) are quoted as issue #23 of this project quotes them ("The Spike,
the Sparse and the Sink", Sun et al. 2026, at 4096-token context; gated attention: Qiu et al. 2025;
loss ranges: the paper's position-range ablation); "-" where we have no number to quote.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from sinkhole.results.base import Result

K_SD = 2.0
RESOLUTION = 0.01  # differences below 1% of the baseline's mean never count, even when every seed agrees
METRICS = {  # Checkpoint field -> what the table calls it
    "spike_score": "spike score",
    "top_ratio": "top |h|",
    "sink_mass": "sink mass",
    "sink_rate": "sink rate",
}
SPIKE_METRICS = ("spike_score", "top_ratio")


@dataclass(frozen=True)
class Claim:
    variant: str
    metric: str  # a key of METRICS
    direction: str  # "lower", "higher" or "kept", relative to the baseline
    text: str
    paper: str  # the paper's number(s) for this row, as quoted (see the module docstring)


CLAIMS: tuple[Claim, ...] = (
    Claim("gelu", "spike_score", "lower", "no SwiGLU gate, no quadratic amplifier: smaller spike", "-"),
    Claim("linear-ffn", "spike_score", "lower", "a linear FFN cannot step a token up: smaller spike", "-"),
    Claim("attn-only", "spike_score", "lower", "no FFN, no step-up block: no spike", "-"),
    Claim("sandwich", "spike_score", "lower", "sandwich norm removes the spike", "top |h| 3818 -> 520"),
    Claim("sandwich", "sink_rate", "kept", "sandwich norm keeps the sink", "sink rate 44.7%"),
    Claim("sandwich-qk", "spike_score", "lower", "sandwich + QK-norm removes the spike", "top |h| 3818 -> 92"),
    Claim("sandwich-qk", "sink_rate", "kept", "sandwich + QK-norm keeps the sink", "sink rate 42.0%"),
    Claim("dyt", "spike_score", "lower", "DynamicTanh bounds the spike", "top |h| 3818 -> 153"),
    Claim("dyt", "sink_rate", "higher", "DynamicTanh raises the sink rate", "sink rate 61%"),
    Claim("gated", "sink_mass", "lower", "gated attention removes the sink", "first-token attention 0.47 -> 0.05"),
    Claim("sigmoid", "sink_mass", "lower", "sigmoid attention needs no sink", "-"),
    Claim("softpick", "sink_mass", "lower", "softpick attention needs no sink", "-"),
    Claim("no-bos", "sink_rate", "kept", "without a start token the sink moves to the first token", "-"),
    Claim("loss-from-quarter", "sink_rate", "lower", "loss on T/4..T only: weaker sink", "sink rate 46% -> 13%"),
    Claim("loss-from-half", "sink_rate", "lower", "loss on T/2..T only: almost no sink", "sink rate 46% -> 1.2%"),
)


@dataclass(frozen=True)
class Stat(Result):
    """One metric of one variant over its seeds' last checkpoints."""

    mean: float
    sd: float  # sample standard deviation (ddof 1); 0 with one seed
    n: int  # seeds

    @classmethod
    def of(cls, values) -> Stat:
        x = np.asarray(list(values), dtype=float)
        if x.size == 0:
            return cls(math.nan, math.nan, 0)
        return cls(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0, int(x.size))


@dataclass
class Onsets(Result):
    """Per seed, the first checkpoint step at which the detector reports position 0 as a sink (spike)
    in at least half the probe sequences; None where it never does."""

    sink: list[int | None] = field(default_factory=list)
    spike: list[int | None] = field(default_factory=list)


@dataclass
class ClaimVerdict(Result):
    """One paper claim (`Claim`'s fields), our numbers for it, and the verdict of the rule."""

    variant: str
    metric: str
    direction: str
    text: str
    paper: str
    baseline: Stat | None = None  # None: not run
    ours: Stat | None = None
    difference: float | None = None  # mean(variant) - mean(baseline)
    pooled_sd: float | None = None
    verdict: str = "untestable"  # "supported", "contradicted", "inconclusive" or "untestable"
    why: str = ""  # why untestable or inconclusive ("" when the rule alone decided)


@dataclass
class LabSummary(Result):
    """What lab.json's "summary" holds: per-variant statistics, onsets, and a verdict per claim."""

    rule: str
    threshold: float
    variants: dict[str, dict[str, Stat]] = field(metadata={"map": "{variant: {metric: {mean, sd, n}}}"})
    onsets: dict[str, Onsets] = field(metadata={"map": "{variant: {sink, spike}}"})
    claims: list[ClaimVerdict]


def verdict(base: Stat, var: Stat, direction: str, k: float = K_SD) -> str:
    """'supported', 'contradicted' or 'inconclusive' by the rule in the module docstring."""
    if base.n < 2 or var.n < 2:
        return "inconclusive"
    d = var.mean - base.mean
    margin = max(k * math.sqrt((base.sd**2 + var.sd**2) / 2), RESOLUTION * abs(base.mean))
    if direction == "kept":
        if d < -margin:
            return "contradicted"
        return "inconclusive" if margin >= 0.5 * abs(base.mean) else "supported"
    sign = {"lower": -1.0, "higher": 1.0}[direction]
    if sign * d > margin:
        return "supported"
    if -sign * d > margin:
        return "contradicted"
    return "inconclusive"


def variant_stats(runs) -> dict[str, dict[str, Stat]]:
    """{variant: {metric: Stat over its seeds' last checkpoints}} of VariantResult-like runs (finished ones)."""
    by: dict[str, list] = {}
    for r in runs:
        if r.finished and r.checkpoints:
            by.setdefault(r.name, []).append(r.checkpoints[-1])
    return {name: {m: Stat.of(getattr(c, m) for c in cks) for m in METRICS} for name, cks in by.items()}


def first_step(checkpoints, field: str, at_least: float) -> int | None:
    """The first checkpoint step whose `field` is >= at_least (None: never)."""
    return next((c.step for c in checkpoints if getattr(c, field) >= at_least), None)


def onsets(runs) -> dict[str, Onsets]:
    """{variant: Onsets}: per seed, the first step at which the detector reports position 0 as a sink
    (resp. spike) in at least half the probe sequences; None where it never does."""
    out: dict[str, Onsets] = {}
    for r in runs:
        if r.finished and r.checkpoints:
            o = out.setdefault(r.name, Onsets())
            o.sink.append(first_step(r.checkpoints, "sink_detected", 0.5))
            o.spike.append(first_step(r.checkpoints, "spike_detected", 0.5))
    return out


def judge(stats: dict[str, dict[str, Stat]], threshold: float) -> list[ClaimVerdict]:
    """One row per claim: the claim, the paper's number, ours (baseline and variant), and the verdict."""
    rows = []
    base = stats.get("baseline")
    for c in CLAIMS:
        var = stats.get(c.variant)
        if base is None or var is None:
            rows.append(ClaimVerdict(**asdict(c), verdict="untestable", why="not run"))
            continue
        b, v = base[c.metric], var[c.metric]
        row = ClaimVerdict(
            **asdict(c),
            baseline=b,
            ours=v,
            difference=v.mean - b.mean,
            pooled_sd=math.sqrt((b.sd**2 + v.sd**2) / 2),
        )
        if c.metric in SPIKE_METRICS and base["spike_score"].mean < threshold:
            row.why = f"no spike in the baseline: < {threshold:g}x"
            rows.append(row)
            continue
        row.verdict = verdict(b, v, c.direction)
        row.why = "fewer than 2 seeds" if min(b.n, v.n) < 2 else ""
        rows.append(row)
    return rows


def summarize(runs, threshold: float) -> LabSummary:
    """What lab.json's "summary" holds: per-variant statistics, onsets, and the verdicts."""
    stats = variant_stats(runs)
    return LabSummary(
        rule=f"supported when the difference exceeds {K_SD:g} pooled sd in the claimed direction; "
        "contradicted when it does so in the other; inconclusive otherwise (see sinkhole.lab.claims)",
        threshold=threshold,
        variants=stats,
        onsets=onsets(runs),
        claims=judge(stats, threshold),
    )
