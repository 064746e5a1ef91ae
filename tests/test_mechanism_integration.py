"""The mechanism on the real SmolLM2-135M-Instruct (chat template): checks against what was
measured independently (spike on token 0 rises in decoder layer 11, falls in the last two layers)
and the paper's qualitative claims, each computed by the code under test."""

from __future__ import annotations

import pytest

from sinkhole.experiments.interventions import text_ids
from sinkhole.experiments.mechanism_study import DEFAULT_PROMPTS, MechanismConfig, run_mechanism
from sinkhole.experiments.vocab_sweep import vocab_sweep
from sinkhole.probe.probe import ModelProbe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smol_mechanism(smollm2):
    probe = ModelProbe(smollm2)
    cfg = MechanismConfig(text_tokens=256)
    mech, _ = run_mechanism(probe, DEFAULT_PROMPTS[:4], cfg=cfg)
    return mech


def test_lifecycle_matches_independent_measurement(smol_mechanism):
    m = smol_mechanism
    L = 30
    assert m.targets.step_up_layer == 11 and not m.targets.fallback
    tok0 = [t for t in m.lifecycle.tokens if t.position == 0]
    assert len(tok0) == 4
    for t in tok0:
        assert t.rise_block // 2 == 11
        assert t.fall_block // 2 in (L - 2, L - 1)
        assert all(t.step_down_cancels.values())


def test_amplifier_and_normalization(smol_mechanism):
    m = smol_mechanism
    main = m.amplifier.channels[0]
    assert main.channel == m.channels.main
    assert main.fro_rank <= 3  # the spike channel's ||U_k||_F stands out among 576
    assert main.alignment_spike > 3 * main.alignment_other
    assert m.normalization.after.spike_sparsity > m.normalization.before.spike_sparsity
    assert m.sink_keys.n_sink_heads > m.sink_keys.n_heads / 2


def test_interventions_shape_of_the_literature(smol_mechanism):
    ratio = smol_mechanism.interventions.ratio_to_none
    assert ratio.zero > 10  # zeroing the spike channels breaks the model
    assert abs(ratio.mean - 1) < 0.2  # setting them to their mean does not
    assert abs(ratio.random_zero - 1) < 0.2


def test_vocab_sweep_sample(smollm2):
    out = vocab_sweep(smollm2, text_ids(smollm2.tokenizer, None, 256), sample=256, batch_size=128)
    assert out.n_tokens == 256 and out.sampled
    assert out.spike_share > 0.9  # nearly every SmolLM2 token spikes alone at position 0


def test_cli_writes_mechanism_section(tmp_path, smollm2, capsys):
    import json

    from sinkhole.cli.main import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Hello there."}\n{"prompt": "Name a prime number."}\n')
    out = tmp_path / "r.json"
    assert main(["mechanism", "--prompts", str(prompts), "--no-interventions", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["schema"] == "sinkhole.report/1" and d["mechanism"]["config"]["n_prompts"] == 2
    assert d["mechanism"]["targets"]["step_up_layer"] == 11
    assert "Lifecycle" in capsys.readouterr().out
    assert main(["mechanism", "--prompts", str(tmp_path / "missing.txt")]) == 2
