"""The verdict rule of the lab's paper claims (sinkhole.results.lab_claims), on synthetic numbers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sinkhole.results.lab_claims import CLAIMS, Stat, judge, onsets, variant_stats, verdict


def test_stat_is_mean_and_sample_sd():
    s = Stat.of([1.0, 2.0, 3.0])
    assert (s.mean, s.sd, s.n) == (2.0, 1.0, 3)
    assert Stat.of([4.0]).sd == 0.0 and Stat.of([]).n == 0


@pytest.mark.parametrize(
    "base, var, direction, want",
    [
        # 2 pooled sd = 2 * sqrt((0.1^2 + 0.1^2) / 2) = 0.2
        ((1.0, 0.1), (0.7, 0.1), "lower", "supported"),  # 0.3 lower
        ((1.0, 0.1), (1.3, 0.1), "lower", "contradicted"),  # 0.3 higher
        ((1.0, 0.1), (0.85, 0.1), "lower", "inconclusive"),  # 0.15 < 0.2
        ((1.0, 0.1), (1.3, 0.1), "higher", "supported"),
        ((1.0, 0.1), (0.7, 0.1), "higher", "contradicted"),
        ((1.0, 0.1), (0.9, 0.1), "kept", "supported"),  # within 2 sd
        ((1.0, 0.1), (0.7, 0.1), "kept", "contradicted"),
        ((1.0, 0.3), (1.0, 0.3), "kept", "inconclusive"),  # 2 sd = 0.6 >= half the baseline: too noisy
        ((0.0, 0.0), (0.0, 0.0), "kept", "inconclusive"),  # nothing to keep
        ((0.074, 0.0), (0.0741, 0.0), "lower", "inconclusive"),  # sd 0: under 1% of the mean never counts
        ((0.074, 0.0), (0.06, 0.0), "lower", "supported"),
    ],
)
def test_verdict_rule(base, var, direction, want):
    assert verdict(Stat(*base, 3), Stat(*var, 3), direction) == want


def test_one_seed_is_inconclusive():
    assert verdict(Stat(1.0, 0.0, 1), Stat(0.0, 0.0, 1), "lower") == "inconclusive"


def _run(name, seed, spike, rate, steps=(0, 10, 100)):
    cks = [
        SimpleNamespace(
            step=s,
            spike_score=spike * (k + 1) / len(steps),
            top_ratio=spike,
            sink_mass=rate / 2,
            sink_rate=rate,
            sink_detected=1.0 if k >= 1 else 0.0,
            spike_detected=1.0 if k == 2 and spike > 10 else 0.0,
        )
        for k, s in enumerate(steps)
    ]
    return SimpleNamespace(name=name, seed=seed, finished=True, checkpoints=cks)


def test_judge_and_onsets_on_synthetic_runs():
    runs = [_run("baseline", s, 40.0 + s, 0.5 + 0.01 * s) for s in range(3)]
    runs += [_run("sandwich", s, 3.0 + s, 0.1 + 0.01 * s) for s in range(3)]  # spike gone, sink gone
    runs += [_run("dyt", s, 40.0 - s, 0.9 + 0.01 * s) for s in range(3)]  # spike kept, sink up
    stats = variant_stats(runs)
    assert stats["baseline"]["spike_score"].mean == pytest.approx(41.0)
    rows = {(r.variant, r.metric): r for r in judge(stats, threshold=10.0)}
    assert rows["sandwich", "spike_score"].verdict == "supported"
    assert rows["sandwich", "sink_rate"].verdict == "contradicted"  # the paper: kept
    assert rows["dyt", "spike_score"].verdict == "inconclusive"
    assert rows["dyt", "sink_rate"].verdict == "supported"
    assert rows["gated", "sink_mass"].verdict == "untestable"  # not run
    assert len(rows) == len(CLAIMS)
    # Without a spike in the baseline, spike claims are untestable.
    low = variant_stats([_run("baseline", s, 2.0, 0.5) for s in range(3)] + runs[3:6])
    assert {r.verdict for r in judge(low, 10.0) if r.variant == "sandwich" and r.metric == "spike_score"} == {
        "untestable"
    }
    o = onsets(runs)
    assert o["baseline"].to_dict() == {"sink": [10, 10, 10], "spike": [100, 100, 100]}
    assert o["sandwich"].spike == [None, None, None]


def test_page_title_and_verdicts_follow_the_baseline_spike():
    """The committed lab run (docs/lab/lab.json), its baseline's spike scores set to 1x (no spike: the
    title promises none, spike claims are untestable) and then to 20x (the other title, and verdicts)."""
    import json
    from pathlib import Path

    from sinkhole.render.lab_page import title
    from sinkhole.results.lab import LabResult

    d = json.loads((Path(__file__).parent.parent / "docs" / "lab" / "lab.json").read_text())
    result = LabResult.from_dict(d)
    baseline = [ck for run in result.variants if run.name == "baseline" for ck in run.checkpoints]
    for spike in (1.0, 20.0):
        for ck in baseline:
            ck.spike_score = spike
        if spike == 1.0:
            assert "no spike reached" in title(result)
            claims = {(c.variant, c.metric): c.verdict for c in result.summary().claims}
            assert claims["sandwich", "spike_score"] == "untestable"
    assert title(result) == "attention sinks and spikes in tiny models"
    claims = {(c.variant, c.metric): c.verdict for c in result.summary().claims}
    assert claims["sandwich", "spike_score"] == "supported"


def test_committed_lab_json_reads_back_byte_identical():
    """The typed result (sinkhole.results.lab) writes a lab.json it read back byte for byte, summary included."""
    import json
    from pathlib import Path

    from sinkhole.results.lab import LabResult

    text = (Path(__file__).parent.parent / "docs" / "lab" / "lab.json").read_text()
    assert json.dumps(LabResult.from_dict(json.loads(text)).to_dict(), indent=1, allow_nan=False) == text
