"""kv-bench refuses lengths past the model's context before the weights load (sinkhole.cli.kv_bench_cmd)."""

import json


def test_lengths_past_the_context_refused_before_the_load(tmp_path, capsys, monkeypatch):
    from sinkhole.cli.main import main

    # a model folder with a config and no weights: a load would fail, so exit 2 with the context message
    # shows the refusal comes first
    d = tmp_path / "ctx128"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 1024}))
    monkeypatch.chdir(tmp_path)
    assert main(["kv-bench", "--model", str(d), "--lengths", "512,1024", "--json", "k.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lengths 1024: past" in err[0] and "context of 1024 tokens" in err[0], err


def test_known_context_reads_the_config_or_says_unknown(tmp_path):
    from sinkhole.models.registry import known_context

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 32768}}))
    assert known_context(str(d)) == 32768
    (d / "config.json").write_text("{not json")
    assert known_context(str(d)) is None
    assert known_context(str(tmp_path / "missing")) is None


def test_the_preset_fits_the_context_and_no_answer_passes_the_room():
    from test_kvbench import CharTokenizer

    from sinkhole.cli.kv_bench_cmd import fit_preset
    from sinkhole.kvbench.bench import BenchSettings
    from sinkhole.long_tasks import ANSWER_ROOM, TASKS, Encoder, make_samples

    s = BenchSettings(("niah",), (1024, 2048, 4096, 8192), ("dense",))
    assert fit_preset(s, 8192).lengths == (1024, 2048, 4096, 8192 - ANSWER_ROOM)
    assert fit_preset(s, 32768).lengths == s.lengths and fit_preset(s, None).lengths == s.lengths
    assert fit_preset(s, 2048 + ANSWER_ROOM).lengths == (1024, 2048)  # duplicates merge
    enc = Encoder(CharTokenizer())
    longest = max(len(x.answer) for t in TASKS for x in make_samples(enc, t, 512, 2, 1))
    assert longest <= ANSWER_ROOM
