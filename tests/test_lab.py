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
from sinkhole.lab.run import PROBE_BATCH_INDEX, VARIANTS, LabSettings, run_lab, variant_configs
from sinkhole.lab.train import TrainConfig, checkpoint_steps, position_loss
from sinkhole.results.lab import LabResult


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
    assert checkpoint_steps(0, 10) == [0] and checkpoint_steps(5, 1) == [0, 5] and checkpoint_steps(40, 2) == [0, 40]
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
        {"norm": "dyt"},
        {"ffn": "gelu"},
        {"ffn": "linear"},
        {"ffn": "none"},
        {"ffn": "none", "norm": "sandwich"},
    ],
)
def test_probe_reads_the_model_unchanged(switch):
    """SDPA and eager agree; the probe (its own attention, or the eager fallback for non-softmax
    variants) sees every layer, and its attention mass equals the model's own weights."""
    from sinkhole.analysis.core import analyze
    from sinkhole.probe.loading import LoadedModel
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
    if switch.get("ffn") != "none":  # an attention-only block has no FFN to place norms around
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
    assert analyze(cap).sinks.top.position >= 0


SMALL = {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 96, "num_attention_heads": 2, "head_dim": 32}


def _settings(tmp_variants, steps, **model):
    """The one-layer model of the measurements in the module docstring, one seed (not the lab's default)."""
    s = LabSettings(model={**SMALL, **model}, data=DataConfig(), variants=tmp_variants, seeds=None)
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

    args = [
        "lab",
        "--quick",
        "--variants",
        "baseline,sandwich",
        "--seeds",
        "0,1",
        "--steps",
        "4",
        "--checkpoints",
        "2",
    ]
    assert main([*args, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "sandwich" in out and "sink mass" in out and "verdict" in out
    for name in ("lab.json", "trajectories.png", "emergence.png", "final.png", "lab.html"):
        assert (tmp_path / name).stat().st_size > 0
    lab = json.loads((tmp_path / "lab.json").read_text())
    assert lab["summary"]["variants"]["baseline"]["sink_rate"]["n"] == 2
    assert [c["step"] for c in lab["variants"][0]["checkpoints"]] == [0, 4]  # the last checkpoint is the last step
    page = (tmp_path / "lab.html").read_text()
    # An HTML table (not terminal text), the verdicts, and a title that promises no spike it did not see.
    assert "<table" in page and '<pre class="table">' not in page and "untestable" in page
    assert "no spike reached" in page
    assert main(["lab", "--out", str(tmp_path / "x"), "--variants", "nope"]) == 2
    assert main(["lab", "--out", str(tmp_path / "y"), "--steps", "0"]) == 2
    assert main(["lab", "--out", str(tmp_path / "z"), "--seed", "1", "--seeds", "0,1"]) == 2


def test_text_task_holds_out_its_tail():
    s = TokenStream(DataConfig(task="text", seq_len=32), 0)
    train_ids, held = s.batch(0, 64), s.batch(PROBE_BATCH_INDEX, 64)
    assert bool((train_ids[:, 0] == BOS).all()) and int(train_ids.max()) < s.cfg.vocab_size
    split = int(len(s.ids) * 0.95)
    text = "".join(IdTokenizer(0, text=True).decode(held[0, 1:].tolist()))
    assert text in IdTokenizer(0, text=True).decode(s.ids[split:].tolist())
    assert not bool(s.predictable(held).any())


def test_loss_from_counts_late_positions_only():
    torch.manual_seed(0)
    logits, ids = torch.randn(2, 8, 5, requires_grad=True), torch.randint(5, (2, 8))
    assert torch.allclose(
        position_loss(logits, ids, 0.0),
        torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 5), ids[:, 1:].reshape(-1)),
    )
    position_loss(logits, ids, 0.5).backward()
    # targets t >= 4 are predicted by logits at 3..6: no gradient reaches positions 0..2 or 7
    touched = logits.grad.abs().sum(-1).sum(0) > 0
    assert touched.tolist() == [False, False, False, True, True, True, True, False]


def test_variants_are_one_switch_and_heads_scale_with_the_base():
    base = LabSettings(model={"num_attention_heads": 4, "head_dim": 16})
    shapes = {n: variant_configs(base, VARIANTS[n])[0] for n in VARIANTS}
    assert (shapes["head-dim-double"].num_attention_heads, shapes["head-dim-double"].head_dim) == (4, 32)
    assert (shapes["heads-double"].num_attention_heads, shapes["heads-double"].head_dim) == (8, 8)
    assert (shapes["heads-half"].num_attention_heads, shapes["heads-half"].head_dim) == (2, 32)
    ref = shapes["baseline"].to_dict()
    for name, v in VARIANTS.items():
        if name.startswith("head") or not v.model:
            continue
        diff = {k for k, val in shapes[name].to_dict().items() if ref.get(k) != val}
        assert diff == set(v.model), name


def test_every_variant_is_in_the_cli_help():
    from sinkhole.cli.lab_cmd import EPILOG

    assert all(name in EPILOG for name in VARIANTS if name != "baseline")
