"""The small commands and the UX rules around them: --version, models, compare, --threads, device auto,
percentages that never round to 100%, progress lines in logs, rows.csv, one channel order, typed rows."""

import io
import json

import pytest
import torch
from conftest import tiny_llama, wrap
from test_cli import run_cli, tiny_dir  # noqa: F401  (fixture)

from sinkhole.analysis.core import analyze, order_channels
from sinkhole.probe.probe import ModelProbe


def test_version(capsys):
    from sinkhole import __version__
    from sinkhole.cli.main import main

    assert main(["--version"]) == 0  # argparse's exit code is returned, not raised
    assert capsys.readouterr().out.strip() == f"sinkhole {__version__}"


def test_models_lists_bundled_and_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SINKHOLE_CACHE", str(tmp_path))
    conv = tmp_path / "gguf" / "abc123"
    conv.mkdir(parents=True)
    (conv / "config.json").write_text("{}")
    (conv / "model.safetensors").write_bytes(b"x" * 3000)
    (conv / "sinkhole-source.json").write_text(json.dumps({"gguf": "/nowhere/m.gguf", "sha256": "abc"}))
    code, out, err = run_cli(capsys, "models", "--json", str(tmp_path / "m.json"))
    assert code == 0
    assert "smollm2-135m" in out and "gemma3-270m" in out and "abc123" in out and "m.gguf" in out
    d = json.loads((tmp_path / "m.json").read_text())
    assert [b["name"] for b in d["bundled"]] == ["smollm2-135m", "gemma3-270m"]
    assert d["cache"]["converted"][0]["bytes"] > 3000 and d["cache"]["converted"][0]["complete"]


def _report(ids, tmp_path, name):
    cap = ModelProbe(wrap(tiny_llama(), name="tiny"), top_k=4).run(ids)
    d = analyze(cap, threshold=1.5).to_dict()
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p, d


def test_compare_two_reports(tmp_path, capsys):
    a, da = _report([5, 17, 3, 42, 8, 8, 91], tmp_path, "a.json")
    b, db = _report([9, 17, 3, 42, 8, 60, 2, 7], tmp_path, "b.json")
    code, out, err = run_cli(
        capsys, "compare", str(a), str(b), "--output", str(tmp_path / "c.html"), "--json", str(tmp_path / "c.json")
    )
    assert code == 0, err
    assert "Spike tokens" in out and "Sink heads" in out and "Tokens  7 -> 8" in out
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["schema"] == "sinkhole.compare/1" and c["n_tokens"] == [7, 8]
    assert c["spikes"]["n"] == [len(da["spikes"]["tokens"]), len(db["spikes"]["tokens"])]
    assert c["heads"]["same_shape"] and len(c["heads"]["diff"]) == da["model"]["n_layers"]
    page = (tmp_path / "c.html").read_text()
    assert "fig-diff" in page and "<script src=" not in page
    # one table with a difference column; the details below it do not print the table again
    assert "<th>B − A</th>" in page and "<tr><th>tokens</th><td>7</td><td>8</td><td>+1</td></tr>" in page
    assert page.count("KV: attention on sink slots") == 1 and "Tokens  7 -&gt; 8" not in page


def test_compare_refuses_mixed_and_foreign_files(tmp_path, capsys):
    a, _ = _report([5, 17, 3, 42], tmp_path, "a.json")
    (tmp_path / "s.json").write_text(json.dumps({"schema": "sinkhole.eval-summary/1"}))
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    for other, msg in (
        ("s.json", "not one of each"),
        ("x.json", "neither an analyze report"),
        ("nope.json", "not found"),
    ):
        code, out, err = run_cli(capsys, "compare", str(a), str(tmp_path / other))
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_threads_default_and_flag(tiny_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    from sinkhole.cli.common import default_threads

    assert default_threads(2, 2, busy=0) == 2 and default_threads(2, 2, busy=None) == 2  # quiet / no /proc
    assert default_threads(2, 2, busy=1) == 1 and default_threads(2, 2, busy=5) == 1  # shared: never oversubscribe
    assert default_threads(1, 1) == 1 and default_threads(None, 4) == 4
    assert default_threads(16, 8) == 8 and default_threads(64, 32) == 8 and default_threads(16, 8, busy=12) == 4
    from sinkhole.cli.common import busy_cpus

    busy = busy_cpus()
    assert busy is None or 0 <= busy < 10_000
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        code, out, err = run_cli(capsys, "analyze", "--model", str(tiny_dir), "--prompt", "the one", "--threads", "1")
        assert code == 0 and torch.get_num_threads() == 1
        code, out, err = run_cli(capsys, "analyze", "--model", str(tiny_dir), "--prompt", "the one", "--threads", "0")
        assert code == 2 and "--threads must be at least 1" in err
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_device_auto_without_cuda_uses_cpu(tiny_dir):  # noqa: F811
    from sinkhole.probe.loading import load_model

    said = []
    lm = load_model(str(tiny_dir), device="auto", log=said.append)
    assert lm.device.type == "cpu" and any("no CUDA" in s for s in said)


def test_pct_never_rounds_a_part_to_the_whole():
    from sinkhole.render.analyze_text import pct

    assert pct(2047 / 2048) == "99.95%" and pct(1.0) == "100.0%" and pct(0.576) == "57.6%"
    assert pct(0.0004) == "0.04%" and pct(0.0) == "0.0%" and pct(None) == "n/a" and pct(0.82, 0) == "82%"


def test_progress_in_a_log_is_whole_lines():
    from sinkhole.progress import LineProgress, end_bars, progress

    buf = io.StringIO()
    bar = progress(total=20, desc="eval", unit="prompt", file=buf)
    assert isinstance(bar, LineProgress)  # not a terminal: no tqdm
    bar.quiet_for = 0.0
    for _ in range(20):
        bar.update(1)
    end_bars()  # what the CLI calls before an error
    text = buf.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert 2 <= len(lines) <= 11 and lines[-1].startswith("eval: 20/20 prompt (100%)")
    quiet = io.StringIO()
    with progress(total=3, desc="layers", file=quiet) as b:  # a step done in well under 2 s prints nothing
        b.update(3)
    assert quiet.getvalue() == ""


def test_rows_csv():
    from sinkhole.eval.export import COLUMNS, rows_csv

    row = {
        "index": 3,
        "category": "a,b",
        "n_tokens": 9,
        "n_spikes": 1,
        "spike_score": 30.5,
        "spike_channels": [507, 14],
        "spikes": [
            dict(position=0, text="<s>", score=30.5, top_value=1.0, layer=0, channel=507, channels=[507, 14])
            | dict(step_up_layers=[], step_down_layers=[], channel_values=[1.0, 0.5])
        ],
        "n_sinks": 1,
        "sinks": [{"position": 0, "text": "<s>", "attn_mass": 0.5, "sink_rate": 0.8}],
        "sink_mass": 0.5,
        "sink_rate": 0.8,
        "top_sink": {"position": 0, "text": "<s>", "attn_mass": 0.5, "sink_rate": 0.8},
        "sink_heads": [[1, 2], [3, 4]],
        "jaccard": None,
        "sink_attention_share": 0.5,
        "tokens": ["<s>"],
    }
    lines = rows_csv([row]).splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert lines[1] == '3,"a,b",9,1,30.5,507 14,0,1,0,0.5,0.8,0,<s>,2,,0.5,'  # no suite given: no prompt text
    assert rows_csv([row], {3: 'say "hi"'}).splitlines()[1].endswith(',0.5,"say ""hi"""')


def test_one_channel_order():
    # each token lists its channels by |h|; pooled: mean rank (absent = last), then id
    assert order_channels([[507, 247, 14, 100]] * 3) == [507, 247, 14, 100]
    assert order_channels([[5, 9], [9, 5], [5, 9, 1]]) == [5, 9, 1]
    assert order_channels([]) == []
    assert order_channels([[2, 1]], keep=[1]) == [1]


def test_report_rows_are_typed_and_json_is_unchanged():
    cap = ModelProbe(wrap(tiny_llama(), name="tiny"), top_k=4).run([5, 17, 3, 42, 8, 8, 91])
    r = analyze(cap, threshold=1.2)
    d = r.to_dict()
    assert r.spike_tokens, "the tiny model should have a token above 1.2x"
    s = r.spike_tokens[0]
    assert s.position == d["spikes"]["tokens"][0]["position"] and s.to_dict() == d["spikes"]["tokens"][0]
    assert r.top_sink.attn_mass == d["sinks"]["top"]["attn_mass"]
    assert all(isinstance(x["position"], int) for x in d["spikes"]["tokens"])  # JSON stays plain dicts
    assert json.loads(r.to_json()) == d


def test_mechanism_terminal_formats_counts():
    from sinkhole.render.mechanism_text import _counts

    assert _counts({"L11.ffn": 16}, 16) == "L11.ffn (16 of 16 tokens)"
    assert _counts({}, 3) == "none"


def test_no_spike_prints_the_top_score():
    from sinkhole.render.analyze_text import render_analysis

    cap = ModelProbe(wrap(tiny_llama(), name="tiny"), top_k=4).run([5, 17, 3, 42])
    d = analyze(cap, threshold=1e6).to_dict()
    text = render_analysis(d)
    assert "Spike tokens  0 found" in text and "(top score: pos" in text and "below the threshold" in text
