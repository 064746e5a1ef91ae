"""Profiles: building one from eval rows, SinkDetector, save/load, malformed and foreign profiles,
and (integration) a fresh detection on the real models agreeing with the shipped profiles."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import tiny_llama, wrap

from sinkhole.errors import SinkholeError
from sinkhole.experiments.detector import SinkDetector
from sinkhole.profiles.build import DEFAULT_PINNED_SLOTS, build_profile
from sinkhole.profiles.profile import SHIPPED_DIR, SinkProfile, load_profile

MODEL = {
    "name": "m",
    "architecture": "llama",
    "weights_id": "abc",
    "n_layers": 4,
    "n_heads": 2,
    "n_kv_heads": 1,
    "d_model": 8,
}


def row(tokens, sinks, spikes=(), heads=()):
    """A results row as sinkhole.eval.runner.prompt_row makes it (the keys profiles read; the rest fixed)."""
    fixed = dict(text="a", score=30.0, top_value=1.0, layer=0, channel=0)
    spikes = [
        dict(position=0, **fixed, channels=ch, channel_values=vals, step_up_layers=up, step_down_layers=down)
        for ch, vals, up, down in spikes
    ]
    sinks = [{"position": p, "text": tokens[p], "attn_mass": m, "sink_rate": r} for p, m, r in sinks]
    return {
        **dict(index=0, category="x", n_tokens=len(tokens), n_spikes=len(spikes), spike_score=30.0),
        "spike_channels": sorted({c for s in spikes for c in s["channels"]}),
        "spikes": spikes,
        **dict(n_sinks=len(sinks), sink_mass=0.5, sink_rate=0.5, top_sink=sinks[0], sinks=sinks),
        "sink_heads": [list(h) for h in heads],
        **dict(jaccard=None, sink_attention_share=0.5, tokens=tokens),
    }


def synthetic_rows():
    rows = []
    for i in range(10):
        toks = ["<s>", "a"] + ["b"] * (i % 3) + ["\n", "c", "d"] + ["e"] * i
        sinks = [(0, 0.6 + 0.01 * i, 0.9), (2 + i % 3, 0.1, 0.6)]  # "\n" sinks wherever it appears
        if i < 5:
            sinks.append((1, 0.05, 0.5))  # position 1 only in half the prompts: not in the rule
        spikes = [([7, 3], [100.0 + i, -50.0], [1], [3])]
        if i % 2:
            spikes[0] = ([7, 3, 5], [100.0 + i, -50.0, 20.0], [1, 2], [3])
        rows.append(row(toks, sinks, spikes, heads=[(0, 0), (1, 1)] + ([(2, 0)] if i < 3 else [])))
    return rows


def test_build_profile_rules():
    p = build_profile(synthetic_rows(), MODEL, {"source": "test", "count": 10}, {"threshold": 10.0})
    assert p.sink_positions == [0]
    assert p.sink_rule["token_texts"] == ["\n"]
    assert "position 0 ('<s>')" in p.sink_rule["description"]
    assert p.pinned_slots == 1
    by_pos = {t["position"]: t for t in p.sink_tokens}
    assert by_pos[0]["frequency"] == 1.0 and by_pos[0]["attn_mass"] == pytest.approx(0.645)
    assert by_pos[1]["frequency"] == 0.5
    assert by_pos[None]["text"] == "\n"
    ch = {c["channel"]: c for c in p.spike_channels}
    assert [c["channel"] for c in p.spike_channels][:2] in ([3, 7], [7, 3])
    assert ch[7]["typical_value"] == pytest.approx(104.5) and ch[7]["frequency"] == 1.0
    assert ch[5]["frequency"] == 0.5 and ch[3]["typical_value"] == -50.0
    assert p.step_up_layers == [1, 2] and p.step_down_layers == [3]  # layer 2 in exactly half: kept at >= 0.5
    assert p.sink_heads == [[0, 0], [1, 1]]
    assert p.prompts == {"source": "test", "count": 10}


def test_no_reliable_sink_position_pins_the_default():
    rows = [row(["x", "y", "z"], [((i % 3), 0.4, 0.6)]) for i in range(9)]
    p = build_profile(rows, MODEL, {"source": "t", "count": 9}, {})
    assert p.sink_positions == [] and p.pinned_slots == DEFAULT_PINNED_SLOTS
    assert "no position" in p.sink_rule["description"]


def test_save_load_roundtrip_and_model_check(tmp_path):
    p = build_profile(synthetic_rows(), MODEL, {"source": "test", "count": 10}, {})
    path = tmp_path / "p.json"
    p.save(path)
    q = load_profile(path)
    assert q.to_dict() == json.loads(json.dumps(p.to_dict()))
    assert load_profile(path, model=SimpleNamespace(weights_id="abc", name="m")).sink_positions == [0]
    with pytest.raises(SinkholeError, match="profile is for m .*not this model"):
        load_profile(path, model=SimpleNamespace(weights_id="xyz", name="m"))
    with pytest.raises(SinkholeError, match="profile is for m, not other"):
        load_profile(path, model=SimpleNamespace(weights_id="", name="other"))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("sink_rule"), "missing sink_rule"),
        (lambda d: d.update(schema="other/1"), "not a sinkhole profile"),
        (lambda d: d.update(pinned_slots="4"), "pinned_slots must be"),
        (lambda d: d["sink_rule"].update(positions=[0, -1]), "sink_rule.positions"),
        (lambda d: d["sink_rule"].update(positions=3), "sink_rule.positions"),
        (lambda d: d.update(sink_heads=[[1, 2, 3]]), "sink_heads"),
        (lambda d: d.update(step_up_layers=["a"]), "step_up_layers"),
        (lambda d: d.update(spike_channels=[{"value": 1}]), "spike_channels"),
        (lambda d: d.update(model="smollm2"), "model must be"),
    ],
)
def test_malformed_profiles_are_refused(tmp_path, edit, message):
    d = build_profile(synthetic_rows(), MODEL, {"source": "test", "count": 10}, {}).to_dict()
    edit(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(SinkholeError, match=message) as err:
        load_profile(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_unreadable_and_unknown_profiles(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(SinkholeError, match="cannot read profile"):
        load_profile(tmp_path / "x.json")
    with pytest.raises(SinkholeError, match="no shipped profile.*smollm2-135m"):
        load_profile("no-such-model")


def test_shipped_profiles_load():
    for name in ("smollm2-135m", "gemma3-270m"):
        p = load_profile(name)
        assert p.model["name"] == name and p.model["weights_id"]
        assert p.prompts["count"] >= 400 and p.prompts["source"] == "builtin"
        assert p.pinned_slots >= 1 and p.sink_positions
        assert (SHIPPED_DIR / f"{name}.json").is_file()


def test_detector_on_tiny_model():
    from sinkhole.eval.suite import Suite, SuiteItem

    suite = Suite("ids", [SuiteItem(i, list(range(1, 6 + i)), "c") for i in range(8)])
    p = SinkDetector(wrap(tiny_llama()), prompts=suite, epsilon=0.1).detect()
    assert isinstance(p, SinkProfile)
    assert p.model["name"] == "tiny" and p.prompts["count"] == 8 and p.prompts["sha256"] == suite.sha256
    assert p.settings["epsilon"] == 0.1 and p.settings["chat"] is False
    # every prompt starts with token 1, and position 0 is where a causal model's attention piles up
    assert 0 in [t["position"] for t in p.sink_tokens]


# --- integration: real models -------------------------------------------------------------------


def _channel_set(p: SinkProfile, share: float = 0.9) -> set[int]:
    return {c["channel"] for c in p.spike_channels if c["frequency"] >= share}


@pytest.mark.integration
def test_fresh_detection_agrees_with_shipped_smollm2(smollm2):
    shipped = load_profile("smollm2-135m", model=smollm2)  # also: made for these weights
    fresh = SinkDetector(smollm2, limit=16).detect()
    assert fresh.settings["chat"] == shipped.settings["chat"]
    assert fresh.sink_positions == shipped.sink_positions
    assert fresh.pinned_slots == shipped.pinned_slots
    assert _channel_set(fresh) == _channel_set(shipped)
    assert fresh.step_up_layers == shipped.step_up_layers
    a, b = {tuple(h) for h in fresh.sink_heads}, {tuple(h) for h in shipped.sink_heads}
    assert len(a & b) / len(a | b) >= 0.8, "sink heads differ"
    top = {t["position"]: t for t in shipped.sink_tokens}[shipped.sink_positions[0]]
    mine = {t["position"]: t for t in fresh.sink_tokens}[fresh.sink_positions[0]]
    assert mine["text"] == top["text"] and mine["attn_mass"] == pytest.approx(top["attn_mass"], abs=0.05)


@pytest.mark.integration
def test_fresh_detection_agrees_with_shipped_gemma3(gemma3):
    shipped = load_profile("gemma3-270m", model=gemma3)
    fresh = SinkDetector(gemma3, limit=12).detect()
    assert fresh.settings["chat"] is False and shipped.settings["chat"] is False
    assert fresh.sink_positions == shipped.sink_positions
    assert fresh.pinned_slots == shipped.pinned_slots
    assert _channel_set(fresh) == _channel_set(shipped)


@pytest.mark.integration
def test_shipped_profile_refused_for_the_other_model(gemma3):
    with pytest.raises(SinkholeError, match="profile is for smollm2-135m"):
        load_profile("smollm2-135m", model=gemma3)
