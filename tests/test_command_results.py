"""The typed results of `stream`, `stream --recall`, `quant` and `kv-bench` (sinkhole.results): each
writes the JSON layout it always had and reads it back as typed as a live result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama, wrap

from sinkhole.results.base import schema_text

ROOT = Path(__file__).resolve().parents[1]


def _same_after_round_trip(cls, d: dict) -> None:
    back = cls.from_dict(d).to_dict()
    assert json.dumps(back, indent=1) == json.dumps(d, indent=1)


def _listed_keys(cls) -> set[str]:
    paths: dict[str, str] = {}
    schema_text(cls, paths)
    return {p for p in paths if "[]" not in p and "." not in p}


@pytest.mark.parametrize(
    "path", sorted((ROOT / "benchmarks" / "results").glob("kvbench-*.json")), ids=lambda p: p.name
)
def test_kvbench_files_read_back_typed_and_write_the_same_bytes(path):
    from sinkhole.results.kvbench import Cell, CellSample, KVBenchResult, PooledSummary

    d = json.loads(path.read_text())
    r = KVBenchResult.from_dict(d)
    assert isinstance(r.cells[0], Cell) and isinstance(r.cells[0].samples[0], CellSample)
    assert r.settings.budget == d["settings"]["numbers"]["plan"]["budget"]
    # the summary is derived from the cells: recomputed, it is the one in the file
    assert json.dumps(r.to_dict(), indent=1) == json.dumps(d, indent=1)
    pooled = r.summary().methods.get("random")
    assert pooled is None or isinstance(pooled, PooledSummary)


def test_kvbench_refuses_another_schema():
    from sinkhole.errors import SinkholeError
    from sinkhole.results.kvbench import KVBenchResult

    with pytest.raises(SinkholeError, match="not a kv-bench result"):
        KVBenchResult.from_dict({"schema": "sinkhole.stream/1"})


def test_stream_result_round_trips_and_lists_its_keys():
    from sinkhole.cache.stream_ppl import evaluate_stream
    from sinkhole.results.stream import StreamMethod, StreamResult, StreamSummaryRow

    lm = wrap(tiny_llama(num_hidden_layers=1, max_position_embeddings=64))
    ids = torch.randint(1, 99, (1, 30), generator=torch.Generator().manual_seed(1))
    res = evaluate_stream(lm, ids, cache_size=8, n_sink=2, profile_positions=[0, 3], recompute_samples=4)
    d = res.to_dict()
    assert list(d) == [
        "model",
        "text_source",
        "n_tokens",
        "cache_size",
        "n_sink",
        "sample_positions",
        "methods",
        "settings",
        "schema",
        "summary",
    ]
    assert _listed_keys(StreamResult) == set(d)
    back = StreamResult.from_dict(json.loads(json.dumps(d)))
    assert isinstance(back.methods["profile"], StreamMethod) and isinstance(back.summary[0], StreamSummaryRow)
    assert back.methods["profile"].sink_positions == [0, 3]
    _same_after_round_trip(StreamResult, d)


def _recall_result():
    from sinkhole.results.stream_recall import RecallDetail, RecallResult, RecallRow, RecallSeed, RecallSettings

    seeds = [RecallSeed(s, 0.5, 0.1, 9.0, 100, 10, 0.2, [[0], [1]]) for s in (0, 1)]
    rows = [
        RecallRow("dense", "dense (full attention)", 0.8, 0.1, 9.0, 20, 1.0, 200, 1.0, 0.1),
        RecallRow(
            "random",
            "head-aware (random heads)",
            0.5,
            0.1,
            9.0,
            10,
            0.5,
            100,
            0.5,
            0.4,
            RecallDetail(1, 4, plan={"kv_bytes": 100}, seeds=seeds, recall_range=[0.5, 0.5], ppl_range=[9.0, 9.0]),
        ),
    ]
    settings = RecallSettings(32, 4, [0], 64, "copy", 8, [0, 1], "text", "float32", "cpu")
    return RecallResult("tiny", 600, 0.5, 48, 2, 300, 200, [[[10, 314, 32]]], rows, settings)


def test_recall_result_writes_empty_detail_for_dense_and_round_trips():
    from sinkhole.render.recall_text import render_recall
    from sinkhole.results.stream_recall import RecallDetail, RecallResult

    r = _recall_result()
    d = r.to_dict()
    assert d["rows"][0]["detail"] == {}
    assert list(d["rows"][1]["detail"]) == [
        "retrieval_heads",
        "kv_heads",
        "plan",
        "seeds",
        "recall_range",
        "ppl_range",
    ]
    back = RecallResult.from_dict(json.loads(json.dumps(d)))
    assert back.rows[0].detail == RecallDetail() and back.rows[1].detail.seeds[1].seed == 1
    _same_after_round_trip(RecallResult, d)
    text = render_recall(back)
    assert "repeated 304 tokens later" in text and "1/4 (mean of 2 seeds)" in text and "  all" in text


def test_quant_results_round_trip_and_render_from_the_types():
    from sinkhole.quant.calibration import collect_stats
    from sinkhole.quant.evidence import validate
    from sinkhole.render.quant_text import render_stats, render_validation
    from sinkhole.results.quant import ModuleStats, QuantStats, QuantValidation

    lm = wrap(tiny_llama(seed=2))
    seqs = [list(range(3, 19)), list(range(20, 36))]
    stats = collect_stats(lm, seqs, source="test")
    typed = stats.result()
    assert isinstance(typed.modules[0], ModuleStats) and typed.to_dict() == stats.to_dict()
    for m in typed.modules:  # the table's top channel is the argmax, as the live statistics have it
        assert m.top_channel.channel == int(stats.modules[m.name].channel_absmax.argmax())
    assert typed.hot_modules() == stats.hot_modules()
    _same_after_round_trip(QuantStats, typed.to_dict())
    assert "Linear inputs of tiny" in render_stats(typed)
    hints = {"threshold": 6.0, "alpha": 0.5, "skip": [], "prefix": []}
    v = validate(lm, stats, seqs, seqs[:1], hints, schemes=("float", "naive_static"), alpha_basis={"alpha": "given"})
    d = v.to_dict()
    assert list(d) == [
        "results",
        "hints",
        "n_heldout_tokens",
        "n_heldout_sequences",
        "model",
        "calibration",
        "alpha_basis",
    ]
    assert d["calibration"] == {"source": "test", "n_sequences": 2, "length": 16}
    _same_after_round_trip(QuantValidation, d)
    assert "naive_static" in render_validation(QuantValidation.from_dict(d))


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "results").glob("recall-*.json")), ids=lambda p: p.name)
def test_recall_files_read_back_typed_and_write_the_same_bytes(path):
    from sinkhole.render.recall_text import render_recall
    from sinkhole.results.stream_recall import RecallResult

    d = json.loads(path.read_text())
    r = RecallResult.from_dict(d)
    assert json.dumps(r.to_dict(), indent=1) == json.dumps(d, indent=1)
    assert render_recall(r).splitlines()[0].startswith(f"{d['model']}: copy recall")


@pytest.mark.parametrize("module", ["stream", "stream_recall", "quant", "kvbench"])
def test_every_key_is_named_in_the_module_docstring(module):
    """The docstrings' key listings cannot leave out a key the types write."""
    import dataclasses
    import importlib
    import re

    mod = importlib.import_module(f"sinkhole.results.{module}")
    words = set(re.findall(r"\w+", mod.__doc__))
    for cls in vars(mod).values():
        if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == mod.__name__:
            missing = [f.name for f in dataclasses.fields(cls) if f.name not in words]
            assert not missing, (cls.__name__, missing)


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "results").glob("quant-*.json")), ids=lambda p: p.name)
def test_quant_validation_files_read_back_typed_and_write_the_same_bytes(path):
    from sinkhole.render.quant_text import render_validation
    from sinkhole.results.quant import QuantValidation

    d = json.loads(path.read_text())
    r = QuantValidation.from_dict(d)
    assert json.dumps(r.to_dict(), indent=1) == json.dumps(d, indent=1)
    assert len(render_validation(r).splitlines()) == 2 + len(d["results"])
