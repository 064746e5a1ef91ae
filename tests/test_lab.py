"""The emergence lab: the tiny model is probed unchanged, the data is reproducible, results survive
interruption, and (one short training run) a sink grows on the start token and less so with gating.

Robustness, measured before writing the emergence test (seeds 0, 1, 2; head_dim 32; 150 steps):
the start token's sink mass grows from 0.07 to 0.22-0.38 in every seed and the gated variant ends
lower in every seed (0.10-0.16); the detector (sink rate >= 50%) fires on seed 0 only at that
budget, so only the fixed seed 0 asserts it. See docs/lab.md for the longer runs.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch

from sinkhole.errors import SinkholeError
from sinkhole.lab.data import BOS, DataConfig, IdTokenizer, TokenStream
from sinkhole.lab.model import TinyConfig, build_model, variant_weights
from sinkhole.lab.run import LabResult, LabSettings, run_lab
from sinkhole.lab.train import TrainConfig, checkpoint_steps


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_stream_is_reproducible_and_backcopies():
    cfg = DataConfig(seq_len=48)
    a, b = TokenStream(cfg, seed=3), TokenStream(cfg, seed=3)
    x = a.batch(5, 4)
    assert torch.equal(x, b.batch(5, 4)) and not torch.equal(x, a.batch(6, 4))
    assert x.shape == (4, 48) and bool((x[:, 0] == BOS).all()) and bool((x[:, 1:] != BOS).all())
    # Every token after a trigger copies the token before the trigger.
    trig = (x[:, 1:-1] >= 1) & (x[:, 1:-1] <= cfg.n_triggers)
    assert bool(trig.any())
    assert torch.equal(x[:, 2:][trig], x[:, :-2][trig])
    # Without the start token: the same stream, one token earlier.
    y = TokenStream(replace(cfg, bos=False), seed=3).batch(5, 4)
    assert torch.equal(y[:, :47], x[:, 1:]) and bool((y != BOS).all())
    assert IdTokenizer(3).decode([0, 2, 9]) == "<s>T2a9"


def test_checkpoint_steps_are_log_spaced():
    assert checkpoint_steps(0, 10) == [0] and checkpoint_steps(5, 1) == [0, 5]
    steps = checkpoint_steps(800, 10)
    assert steps[0] == 0 and steps[-1] == 800 and steps == sorted(set(steps)) and len(steps) == 10
    ratios = [b / a for a, b in zip(steps[1:], steps[2:])]
    assert max(ratios) < 3.5


@pytest.mark.parametrize("kind", ["softmax", "gated", "sigmoid", "softpick"])
def test_variant_weights_rows(kind):
    torch.manual_seed(0)
    s = torch.randn(2, 3, 6, 6) * 3
    w = variant_weights(s, kind)
    assert bool((w.triu(1) == 0).all()) and bool((w >= 0).all())
    rows = w.sum(-1)
    if kind in ("softmax", "gated"):
        assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
    elif kind == "softpick":
        assert bool((rows <= 1 + 1e-5).all())
        # softpick(s) = relu(e^s - 1) / sum |e^s - 1|, straight from the definition
        e = (s.exp() - 1) * torch.ones(6, 6).tril()
        assert torch.allclose(w, e.clamp(min=0) / (e.abs().sum(-1, keepdim=True) + 1e-6), atol=1e-5)


@pytest.mark.parametrize(
    "switch",
    [
        {},
        {"norm": "sandwich"},
        {"qk_norm": True},
        {"attention": "gated"},
        {"attention": "sigmoid"},
        {"attention": "softpick"},
    ],
)
def test_probe_reads_the_model_unchanged(switch):
    """SDPA and eager agree; the probe (its own attention, or the eager fallback for non-softmax
    variants) sees every layer, and its attention mass equals the model's own weights."""
    from sinkhole.analysis.core import analyze
    from sinkhole.models.loading import LoadedModel
    from sinkhole.probe.probe import ModelProbe

    model = build_model(TinyConfig(num_hidden_layers=2, **switch), seed=0)
    ids = TokenStream(DataConfig(seq_len=20), 0).batch(0, 2)
    with torch.no_grad():
        a = model(ids).logits
        model.set_attn_implementation("eager")
        out = model(ids, output_attentions=True)
        model.set_attn_implementation("sdpa")
    assert (a - out.logits).abs().max() < 1e-5
    lm = LoadedModel.wrap(model, IdTokenizer(3), name="lab")
    assert lm.family.norm_style == ("sandwich" if switch.get("norm") == "sandwich" else "pre")
    with (
        pytest.warns(UserWarning, match="bypasses")
        if switch.get("attention") in ("sigmoid", "softpick")
        else nullcontext()
    ):
        cap = ModelProbe(lm).run(ids[0].tolist())
    want = torch.stack([w[0] for w in out.attentions])  # (L, H, T, T)
    T = ids.shape[1]
    alpha = want.sum(-2) / torch.arange(T, 0, -1)
    assert abs(cap.attn_mass - alpha.numpy()).max() < 1e-4
    assert analyze(cap).sinks["top"]["position"] >= 0


def _settings(tmp_variants, steps, **model):
    s = LabSettings(model={"head_dim": 32, **model}, variants=tmp_variants)
    return replace(s, train=TrainConfig(steps=steps, lr=1e-2, weight_decay=0.1, n_checkpoints=4, probe_batch=8))


def test_sink_emerges_on_start_token_and_gating_lowers_it(tmp_path):
    """One short run (seed 0): see the module docstring for which directions hold over seeds."""
    result = run_lab(_settings(("baseline", "gated"), 150), tmp_path)
    base, gated = result.variants
    first, last = base.checkpoints[0], base.checkpoints[-1]
    assert last.copy_accuracy > 0.9  # the task is learned
    assert first.sink_mass < 0.1 and last.sink_mass > 2.5 * first.sink_mass
    assert last.sink_detected >= 0.5  # the detector reports the start token as a sink
    assert gated.final.sink_mass < 0.75 * last.sink_mass
    # Everything is on disk, and finished.
    saved = LabResult.from_dict(json.loads((tmp_path / "lab.json").read_text()))
    assert [v.name for v in saved.variants] == ["baseline", "gated"] and all(v.finished for v in saved.variants)
    assert saved.variants[0].final.sink_mass == pytest.approx(last.sink_mass)


def test_resume_skips_finished_variants_and_refuses_other_settings(tmp_path):
    s = _settings(("no-bos",), 3)
    first = run_lab(s, tmp_path)
    steps = []
    again = run_lab(replace(s, variants=("no-bos", "sigmoid")), tmp_path, progress=steps.append)
    assert again.variants[0].to_dict() == first.variants[0].to_dict()  # reused, not retrained
    assert sum(steps) == 6 and again.variants[1].finished
    with pytest.raises(SinkholeError, match="other settings"):
        run_lab(replace(s, train=replace(s.train, seed=1)), tmp_path)
    with pytest.raises(SinkholeError, match="unknown variant"):
        run_lab(replace(s, variants=("nope",)), None)


def test_cli_quick_writes_everything(tmp_path, capsys):
    from sinkhole.cli.main import main

    rc = main(
        [
            "lab",
            "--quick",
            "--variants",
            "baseline,softpick",
            "--steps",
            "4",
            "--checkpoints",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "softpick" in out and "sink mass" in out
    for name in ("lab.json", "trajectories.png", "final.png", "lab.html"):
        assert (tmp_path / name).stat().st_size > 0
    assert main(["lab", "--out", str(tmp_path / "x"), "--variants", "nope"]) == 2
    assert main(["lab", "--out", str(tmp_path / "y"), "--steps", "0"]) == 2
