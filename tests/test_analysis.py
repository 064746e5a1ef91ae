"""The definitions of sinkhole.analysis.core, checked on a hand-made Capture whose answer is known."""

import json

import numpy as np
import pytest

from sinkhole.analysis.core import analyze, step_layers
from sinkhole.probe.capture import Capture, ModelInfo

L, H, T, K = 4, 2, 6, 3


def make_capture() -> Capture:
    rng = np.random.default_rng(0)
    resid_norm = 10 + rng.random((L, T)).astype(np.float32)
    resid_norm[1:3, 0] = [500.0, 480.0]  # token 0 spikes in layers 1-2 (step up at 1, down at 3)
    resid_norm[2, 4] = 150.0  # token 4: score ~14x, above 10
    top_ch = np.tile(np.array([5, 9, 2], dtype=np.int32), (L, T, 1))
    top_val = np.tile(np.array([3.0, -2.0, 1.0], dtype=np.float32), (L, T, 1))
    top_ch[2, 0], top_val[2, 0] = [7, 3, 5], [-490.0, 60.0, 20.0]  # |h| peak at layer 2, channel 7
    top_ch[1, 0], top_val[1, 0] = [7, 3, 1], [450.0, 40.0, 2.0]
    top_ch[2, 4], top_val[2, 4] = [8, 1, 0], [140.0, 2.0, 1.0]
    alpha = np.full((L, H, T), 0.05, dtype=np.float32)
    alpha[:, :, 0] = 0.6  # every head sinks on token 0
    alpha[0, :, 2] = 0.4  # 2 of 8 heads exceed epsilon on token 2: sink rate 25%, not a sink
    alpha[:, :, 5] = 0.9  # the last key has a single query; all heads > epsilon
    return Capture(
        model=ModelInfo("synthetic", "llama", "llama", "pre", L, H, H, 16, 8),
        token_ids=list(range(T)),
        tokens=[f"t{i}" for i in range(T)],
        resid_norm=resid_norm,
        resid_top_channels=top_ch,
        resid_top_values=top_val,
        attn_out_norm=np.ones((L, T), np.float32),
        ffn_out_norm=np.ones((L, T), np.float32),
        embed_norm=np.full(T, 10.0, np.float32),
        attn_mass=alpha,
    )


def test_spikes_sinks_overlap_kv():
    cap = make_capture()
    r = analyze(cap, threshold=10, epsilon=0.3, min_sink_rate=0.5).to_dict()
    peak = cap.resid_norm.max(0)
    med = np.median(peak)
    spikes = {s["position"]: s for s in r["spikes"]["tokens"]}
    assert set(spikes) == {0, 4}
    assert spikes[0]["score"] == pytest.approx(500.0 / med, rel=1e-6)
    assert (spikes[0]["top_value"], spikes[0]["layer"], spikes[0]["channel"]) == (-490.0, 2, 7)
    # typical largest |h| at layer 2 is 3.0: channels above 10 x 3 = 30 -> 7 and 3, not 5 (20)
    assert spikes[0]["channels"] == [7, 3]
    assert spikes[0]["step_up_layers"] == [1] and spikes[0]["step_down_layers"] == [3]
    sinks = {s["position"]: s for s in r["sinks"]["tokens"]}
    assert set(sinks) == {0, 5}
    assert sinks[0]["attn_mass"] == pytest.approx(0.6) and sinks[0]["sink_rate"] == 1.0 and sinks[0]["n_heads"] == 8
    assert r["sinks"]["per_token_sink_rate"][2] == pytest.approx(0.25)
    assert r["sinks"]["top"]["position"] == 5
    assert r["overlap"] == {"jaccard": pytest.approx(1 / 3), "positions": [0]}
    colsum = cap.attn_mass * (T - np.arange(T))
    expected = colsum[..., [0, 5]].sum() / colsum.sum()
    assert r["kv"]["sink_attention_share"] == pytest.approx(expected)
    assert r["kv"]["sink_slot_share"] == pytest.approx(2 / T) and r["kv"]["n_slots"] == T
    assert r["layers"]["max_norm"] == pytest.approx(cap.resid_norm.max(1).tolist())


def test_json_contract_keys_and_strictness():
    d = analyze(make_capture()).to_dict()
    assert d["schema"] == "sinkhole.report/1"
    for key in ("name", "architecture", "n_layers", "n_heads", "n_kv_heads", "d_model", "d_head"):
        assert key in d["model"]
    assert set(d["tokens"][0]) == {"position", "id", "text"}
    assert {"position", "text", "score", "max_norm", "top_value", "layer", "channel", "channels"} <= set(
        d["spikes"]["tokens"][0]
    )
    assert {"position", "text", "attn_mass", "sink_rate", "n_heads"} <= set(d["sinks"]["tokens"][0])
    assert {"jaccard", "positions"} <= set(d["overlap"]) and {"sink_attention_share", "sink_slot_share"} <= set(
        d["kv"]
    )
    json.loads(json.dumps(d, allow_nan=False))


def test_no_spike_no_sink_gives_null_jaccard():
    cap = make_capture()
    cap.resid_norm[:] = 10.0
    cap.attn_mass[:] = 0.1
    d = analyze(cap).to_dict()
    assert d["spikes"]["tokens"] == [] and d["sinks"]["tokens"] == []
    assert d["overlap"]["jaccard"] is None and d["kv"]["sink_attention_share"] == 0.0
    assert d["sinks"]["top"]["position"] in range(T)  # the top token by mass is always reported


def test_step_layers_rule():
    up, down = step_layers(1.0, np.array([1.0, 2.0, 100.0, 100.0, 50.0, 45.0]))
    assert up == [2] and down == [4]  # 45 < 50 - 10 is false: a 5% drop is not a step


def test_capture_roundtrip(tmp_path):
    cap = make_capture()
    cap.save(tmp_path / "c.npz")
    back = Capture.load(tmp_path / "c.npz")
    assert back.tokens == cap.tokens and back.model == cap.model
    np.testing.assert_array_equal(back.attn_mass, cap.attn_mass)
