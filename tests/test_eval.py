"""sinkhole eval: suites, batching, resumable results, aggregation, figures (tiny random models)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_gemma3, tiny_llama, wrap

from sinkhole.cli.eval_cmd import write_outputs
from sinkhole.errors import SinkholeError
from sinkhole.eval import (
    EvalRow,
    EvalSettings,
    Suite,
    SuiteItem,
    load_suite,
    run_eval,
    summarize,
)
from sinkhole.eval.runner import ResultsStore, plan_batches
from sinkhole.probe.probe import ModelProbe
from sinkhole.render.eval_text import render_summary

TESTS = Path(__file__).resolve().parent
# Low threshold/epsilon so that tiny random models have spike and sink tokens to compare.
SETTINGS = dict(threshold=1.1, epsilon=0.1)


def id_suite(n: int, seed: int = 0, lo: int = 2, hi: int = 40) -> Suite:
    rng = random.Random(seed)
    items = [SuiteItem(i, [rng.randrange(1, 99) for _ in range(rng.randrange(lo, hi))], "ab"[i % 2]) for i in range(n)]
    return Suite("test", items)


def assert_rows_close(a: list[EvalRow], b: list[EvalRow], tol: float = 1e-4) -> None:
    assert len(a) == len(b)
    assert all(isinstance(r, EvalRow) for r in a + b)
    for ra, rb in zip((r.to_dict() for r in a), (r.to_dict() for r in b)):
        assert ra.keys() == rb.keys()
        for k in ra:
            _close(ra[k], rb[k], tol, f"row {ra['index']} {k}")


def _close(x, y, tol, where):
    if isinstance(x, float) or isinstance(y, float):
        assert x == pytest.approx(y, rel=tol, abs=tol), where
    elif isinstance(x, list):
        assert len(x) == len(y), where
        for u, v in zip(x, y):
            _close(u, v, tol, where)
    elif isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for k in x:
            _close(x[k], y[k], tol, f"{where}.{k}")
    else:
        assert x == y, where


# --- suites -------------------------------------------------------------------------------------


def test_builtin_suite_is_large_and_diverse():
    suite = load_suite("builtin")
    assert len(suite) >= 400
    assert len(suite.categories) >= 8
    prompts = [it.prompt for it in suite.items]
    assert len(set(prompts)) == len(prompts), "duplicate prompts"
    lengths = sorted(len(p) for p in prompts)
    assert lengths[0] <= 12 and lengths[-1] >= 800, "needs very short and long prompts"
    assert any(any(ord(ch) > 0x3000 for ch in p) for p in prompts), "needs non-Latin scripts"


def test_suite_files_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("first\n\n  \nsecond\n", encoding="utf-8")
    s = load_suite(tmp_path / "a.txt")
    assert [(it.index, it.prompt, it.category) for it in s.items] == [
        (0, "first", "default"),
        (1, "second", "default"),
    ]
    (tmp_path / "b.jsonl").write_text('{"prompt": "x", "category": "q"}\n\n{"prompt": "y"}\n', encoding="utf-8")
    s = load_suite(tmp_path / "b.jsonl")
    assert [(it.prompt, it.category) for it in s.items] == [("x", "q"), ("y", "default")]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n{"text": 1}\n', encoding="utf-8")
    with pytest.raises(SinkholeError, match="bad.jsonl:2"):
        load_suite(tmp_path / "bad.jsonl")
    with pytest.raises(SinkholeError, match="not found"):
        load_suite(tmp_path / "missing.jsonl")
    (tmp_path / "c.csv").write_text("x\n")
    with pytest.raises(SinkholeError, match=".jsonl or .txt"):
        load_suite(tmp_path / "c.csv")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(SinkholeError, match="no prompts"):
        load_suite(tmp_path / "empty.txt")


def test_subset_spreads_over_categories_and_changes_hash():
    suite = load_suite("builtin")
    sub = suite.subset(40)
    assert len(sub) == 40
    assert set(sub.categories) == set(suite.categories)
    assert sub.sha256 != suite.sha256 and sub.sha256 == suite.subset(40).sha256


def test_limit_is_stratified_and_says_so(tmp_path):
    suite = load_suite("builtin")
    k = len(suite.categories)
    few = suite.subset(k - 3)  # fewer prompts than categories: one each from evenly spaced categories
    assert len(few) == k - 3 and len(few.categories) == k - 3
    assert few.selection() == (
        f"{k - 3} of {len(suite)} prompts, one from each of {k - 3} of the {k} categories "
        f"(a limit of {k} or more covers all)"
    )
    sub = suite.subset(3 * k)
    counts = {c: sum(it.category == c for it in sub.items) for c in suite.categories}
    sizes = {c: sum(it.category == c for it in suite.items) for c in suite.categories}
    assert sum(counts.values()) == 3 * k and min(counts.values()) >= 1
    for c in counts:  # in proportion to the category's size, within one prompt (largest remainder)
        assert abs(counts[c] - 1 - (3 * k - k) * (sizes[c] - 1) / (len(suite) - k)) < 1
    assert "from all" in sub.selection() and [it.index for it in sub.items] == sorted(it.index for it in sub.items)
    assert sub.sha256 == suite.subset(3 * k).sha256 and suite.selection() == ""
    (tmp_path / "a.txt").write_text("".join(f"p{i}\n" for i in range(10)), encoding="utf-8")
    one = load_suite(tmp_path / "a.txt", 4)  # one category: evenly spaced, as before
    assert [it.index for it in one.items] == [0, 2, 5, 7] and one.selection("texts") == "4 of 10 texts, evenly spaced"


def test_cli_says_what_limit_took(tmp_path, capsys):
    from sinkhole.cli.main import main

    # refused after the line (no such model), so nothing loads
    assert main(["eval", "--model", str(tmp_path / "none"), "--limit", "8", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--limit 8: 8 of 429 prompts, one from each of 8 of the 11 categories" in err


# --- batching -----------------------------------------------------------------------------------


def test_plan_batches_respects_budget_and_covers_everything():
    rng = random.Random(1)
    lengths = [rng.randrange(1, 300) for _ in range(200)] + [5000]
    batches = plan_batches(lengths, max_batch_tokens=1000, max_batch=8)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    for b in batches:
        assert len(b) <= 8
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1000
        assert min(lengths[i] for i in b) >= 0.7 * max(lengths[i] for i in b)  # padding under 30%


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_batched_equals_unbatched(make):
    """Left padding must not change any number: big batches of mixed lengths vs one prompt a forward."""
    probe = ModelProbe(wrap(make()), top_k=4)
    suite = id_suite(24, seed=3, lo=2, hi=30)
    one = run_eval(probe, suite, None, EvalSettings(**SETTINGS, max_batch=1))
    many = run_eval(probe, suite, None, EvalSettings(**SETTINGS, max_batch=24, max_batch_tokens=10**6))
    assert any(r.n_spikes for r in one) and any(r.n_sinks for r in one), "test needs spikes and sinks"
    assert_rows_close(one, many)


# --- results file, resume -----------------------------------------------------------------------


def test_resume_skips_done_rows_and_refuses_other_settings(tmp_path):
    probe = ModelProbe(wrap(tiny_llama()), top_k=4)
    suite = id_suite(20)
    settings = dict(**SETTINGS, max_batch=3)
    calls = []

    class Stop(Exception):
        pass

    def stop_after_two(n):
        calls.append(n)
        if len(calls) == 2:
            raise Stop  # like Ctrl-C between batches

    with pytest.raises(Stop):
        run_eval(probe, suite, tmp_path, EvalSettings(**settings), progress=stop_after_two)
    assert len(ResultsStore(tmp_path).read_rows()) == sum(calls)
    seen = []
    rows = run_eval(probe, suite, tmp_path, EvalSettings(**settings), initial=seen.append)
    assert seen == [sum(calls)]
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(ln)["index"] for ln in lines) == list(range(20))
    fresh = run_eval(probe, suite, None, EvalSettings(**settings))
    assert_rows_close(rows, fresh)

    with pytest.raises(SinkholeError, match="other settings.*threshold"):
        run_eval(probe, suite, tmp_path, EvalSettings(threshold=5, epsilon=0.1))
    with pytest.raises(SinkholeError, match="other settings.*suite.sha256"):
        run_eval(probe, id_suite(20, seed=9), tmp_path, EvalSettings(**settings))
    other = ModelProbe(wrap(tiny_llama(), name="other"), top_k=4)
    with pytest.raises(SinkholeError, match="other settings.*model.name"):
        run_eval(other, suite, tmp_path, EvalSettings(**settings))


def test_truncated_last_line_is_dropped_and_redone(tmp_path):
    probe = ModelProbe(wrap(tiny_llama()), top_k=4)
    suite = id_suite(10)
    full = run_eval(probe, suite, tmp_path, EvalSettings(**SETTINGS))
    path = tmp_path / "results.jsonl"
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    cut = lines[-1][: len(lines[-1]) // 2]  # a kill in the middle of writing the last row
    path.write_bytes(b"".join(lines[:-1]) + cut)
    rows = run_eval(probe, suite, tmp_path, EvalSettings(**SETTINGS))
    assert_rows_close(rows, full)
    after = path.read_text().splitlines()
    assert len(after) == 10 and sorted(json.loads(x)["index"] for x in after) == list(range(10))

    path.write_text(path.read_text().replace('"index"', '"idx"', 1))  # a corrupt complete line
    with pytest.raises(SinkholeError, match="results.jsonl:1 is corrupt"):
        run_eval(probe, suite, tmp_path, EvalSettings(**SETTINGS))


DRIVER = """
import sys, time
sys.path.insert(0, {tests!r})
from conftest import tiny_llama, wrap
from test_eval import id_suite, SETTINGS
from sinkhole.eval import EvalSettings, run_eval
from sinkhole.probe.probe import ModelProbe
probe = ModelProbe(wrap(tiny_llama()), top_k=4)
# The sleep only slows the driver down so the test can kill it part way.
run_eval(probe, id_suite(60), {out!r}, EvalSettings(**SETTINGS, max_batch=2), progress=lambda n: time.sleep(0.15))
"""


def test_kill_9_then_resume_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER.format(tests=str(TESTS), out=str(out))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if results.is_file() and results.read_bytes().count(b"\n") >= 8:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"driver ended early: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = results.read_bytes().count(b"\n")
    assert 8 <= before < 60
    probe = ModelProbe(wrap(tiny_llama()), top_k=4)
    rows = run_eval(probe, id_suite(60), out, EvalSettings(**SETTINGS, max_batch=2))
    indices = [json.loads(ln)["index"] for ln in results.read_text().splitlines()]
    assert sorted(indices) == list(range(60)), "a row was lost or duplicated"
    assert_rows_close(rows, run_eval(probe, id_suite(60), None, EvalSettings(**SETTINGS)))


# --- aggregation, outputs -----------------------------------------------------------------------


def _row(i, cat, n_tokens, mass, channels, jaccard=1.0):
    """A row as results.jsonl holds it (the numbers the tests look at; the rest fixed)."""
    spike = dict(text="a", score=30.0, top_value=1.0, layer=0, channel=0, step_up_layers=[], step_down_layers=[])
    sink = dict(text="a", attn_mass=mass, sink_rate=0.9)
    spikes = (
        [{"position": 0, **spike, "channels": channels, "channel_values": [100.0 * (c + 1) for c in channels]}]
        if channels
        else []
    )
    return {
        "index": i,
        "category": cat,
        "n_tokens": n_tokens,
        "n_spikes": len(spikes),
        "spike_score": 30.0 + i,
        "spike_channels": sorted(channels),
        "spikes": spikes,
        "n_sinks": 1,
        "sink_mass": mass,
        "sink_rate": 0.9,
        "top_sink": {"position": 0 if i else 3, **sink},
        "sinks": [{"position": 0, **sink}],
        "sink_heads": [],
        "jaccard": jaccard,
        "sink_attention_share": mass,
        "tokens": [],
    }


def test_summarize_statistics():
    rows = [
        _row(0, "a", 10, 0.6, [1, 2]),
        _row(1, "a", 20, 0.5, [1, 2]),
        _row(2, "b", 30, 0.4, [1, 2, 3]),
        _row(3, "b", 40, 0.35, [], jaccard=None),
    ]
    s = summarize(rows)
    m = s.metrics["sink_mass"]
    masses = np.array([0.6, 0.5, 0.4, 0.35])
    assert m.mean == pytest.approx(masses.mean()) and m.std == pytest.approx(masses.std())
    assert (m.min, m.max, m.n) == (0.35, 0.6, 4)
    assert s.metrics["jaccard"].n == 3  # the prompt with neither spike nor sink is left out
    assert s.per_category["b"].metrics["n_tokens"].mean == 35
    ch = s.spike_channels
    assert ch.prompts_with_spikes == 3 and ch.most_common_set == [1, 2]
    assert ch.same_set_share == pytest.approx(2 / 3) and ch.distinct_sets == 2
    assert ch.channels[0].to_dict() == {"channel": 1, "frequency": 1.0, "mean_value": 200.0}
    r = np.corrcoef([10, 20, 30, 40], masses)[0, 1]
    assert s.length_vs_sink_mass_r == pytest.approx(r)
    assert s.top_sink_positions == {"0": 0.75, "3": 0.25}
    text = render_summary(s)
    assert "[1, 2] in 67%" in text and f"r(sequence length, sink mass) = {r:+.2f}" in text


def test_summary_is_typed_and_reads_back():
    """summary.json is the EvalSummary's to_dict (schema first); read back it is the same typed summary."""
    from sinkhole.results.eval import EvalSummary, MetricStats

    s = summarize([_row(0, "a", 10, 0.6, [1, 2]), _row(1, "b", 20, 0.5, [])], {"settings": {"chat": True}})
    d = json.loads(json.dumps(s.to_dict()))
    assert list(d)[:3] == ["schema", "run", "n_prompts"] and d["schema"] == "sinkhole.eval-summary/1"
    back = EvalSummary.from_dict(d)
    assert back == s and isinstance(back.per_category["b"].metrics["sink_mass"], MetricStats)


def test_summary_words_and_one_prompt_rows():
    from sinkhole.render.eval_page import tables_html

    rows = [_row(0, "a", 10, 0.6, [1, 2]), _row(1, "a", 20, 0.5, [1, 2]), _row(2, "solo", 30, 0.4, [1, 2])]
    s = summarize(rows, {"settings": {"chat": True}})
    text, page = render_summary(s), tables_html(s)
    solo = next(line for line in text.splitlines() if line.strip().startswith("solo"))
    assert "±" not in solo and "40.0%" in solo  # one prompt: its mean, no spread of 0.00
    assert "±" in next(line for line in text.splitlines() if line.strip().startswith("a "))
    assert "(1 distinct set)" in text and "(1 distinct set)" in page and "distinct sets" not in text + page
    assert "chat template applied" in text and "chat True" not in text
    one = summarize(rows[2:], {"settings": {"chat": False}})
    assert "± 0.00" not in render_summary(one) and "± 0.00" not in tables_html(one)
    assert "on 1 prompt (" in render_summary(one) and "no chat template" in render_summary(one)


def test_csv_has_the_prompt_text(tmp_path):
    from sinkhole.eval.export import rows_csv

    (tmp_path / "s.txt").write_text("first, with a comma\nsecond\nthird\n", encoding="utf-8")
    suite = load_suite(tmp_path / "s.txt", 2)
    rows = [_row(it.index, "default", 10, 0.5, [1]) for it in suite.items]
    run = {"suite": {"source": str(tmp_path / "s.txt"), "sha256": suite.sha256, "count": 2}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    write_outputs(rows, tmp_path, figures=False)  # no suite given: the one run.json names, checked by its hash
    lines = (tmp_path / "rows.csv").read_text().splitlines()
    assert (
        lines[0].endswith(",prompt") and lines[1].endswith(',"first, with a comma"') and lines[2].endswith(",second")
    )
    (tmp_path / "s.txt").write_text("edited\nsecond\nthird\n", encoding="utf-8")
    write_outputs(rows, tmp_path, figures=False)  # the file changed since the run: no texts rather than wrong ones
    assert (tmp_path / "rows.csv").read_text().splitlines()[1].endswith(",")
    assert rows_csv(rows[:1], {0: [5, 7]}).splitlines()[1].endswith(",5 7")  # token-id prompts


def test_outputs_written(tmp_path):
    probe = ModelProbe(wrap(tiny_llama()), top_k=4)
    rows = run_eval(probe, id_suite(12), tmp_path, EvalSettings(**SETTINGS))
    summary = write_outputs(rows, tmp_path)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["n_prompts"] == 12 and saved["run"]["settings"]["threshold"] == SETTINGS["threshold"]
    assert saved["metrics"]["sink_mass"]["mean"] == pytest.approx(summary.metrics["sink_mass"].mean)
    for name in ("distributions.png", "length_vs_sink_mass.png", "positions.png", "categories.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "summary.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "sink attention mass" in page


# --- integration: SmolLM2 -----------------------------------------------------------------------


@pytest.mark.integration
def test_batched_equals_unbatched_smollm2(smollm2):
    suite = load_suite("builtin")
    by_cat = {}
    for it in suite.items:
        by_cat.setdefault(it.category, it)
    cats = ("short", "factual", "multilingual", "reasoning", "structured", "long")  # 31 to 261 tokens
    sub = Suite("builtin", sorted((by_cat[c] for c in cats), key=lambda it: it.index))
    probe = ModelProbe(smollm2)
    one = run_eval(probe, sub, None, EvalSettings(max_batch=1))
    many = run_eval(probe, sub, None, EvalSettings(max_batch=len(sub), max_batch_tokens=10**6))
    assert len({r.n_tokens for r in one}) >= 5 and max(r.n_tokens for r in one) > 3 * min(r.n_tokens for r in one)
    assert_rows_close(one, many)


@pytest.mark.integration
def test_cli_eval_end_to_end_and_resume(tmp_path, capsys):
    from sinkhole.cli.main import main

    out = tmp_path / "run"
    args = ["eval", "--model", "smollm2-135m", "--prompts", "builtin", "--limit", "6", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "sink attention mass" in printed.out and "Pearson r" in printed.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_prompts"] == 6 and summary["run"]["settings"]["chat"] is True
    for name in ("results.jsonl", "run.json", "summary.html", "distributions.png"):
        assert (out / name).is_file()
    assert main(args) == 0  # everything done: nothing recomputed, nothing duplicated
    assert "resuming: 6 of 6" in capsys.readouterr().err
    assert len((out / "results.jsonl").read_text().splitlines()) == 6
    assert main(args + ["--threshold", "20"]) == 2
    assert "other settings (settings.threshold 10.0 -> 20.0)" in capsys.readouterr().err
