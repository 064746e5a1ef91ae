"""The token mask: the fast forward (lse attention, candidate keys only) against the definitions
computed by hand from a full probe + analyze run; the resumable mask file; the CLI's bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_gemma3, tiny_llama, wrap
from test_cli import run_cli, tiny_dir  # noqa: F401  (fixture)
from test_mechanism import SPIKE_TOKEN, UP_LAYER, planted, prompts, tiny_gemma3_4

from sinkhole.analysis.core import analyze, spike_scores
from sinkhole.errors import SinkholeError
from sinkhole.eval.suite import Suite, SuiteItem
from sinkhole.mask.compute import MaskSettings, mask_batch, token_mask
from sinkhole.mask.store import load_mask, parts_dir, run_mask
from sinkhole.probe.probe import ModelProbe

# Low thresholds so that a random tiny model has spikes and sinks on both sides of each rule.
LOW = dict(threshold=1.2, epsilon=0.1, min_sink_rate=0.3)


def fast_only(probe, monkeypatch):
    """Make the exact probe unreachable: what follows must come from the fast path."""

    def refuse(*a, **k):
        raise AssertionError("the exact probe ran: the fast path refused this batch")

    monkeypatch.setattr(probe, "run_batch", refuse)


def by_hand(capture, positions=None, layer=None, threshold=1.2, epsilon=0.1, min_sink_rate=0.3):
    """The definitions, from a full capture: analyze()'s per-token lists and spike set."""
    rep = analyze(capture, threshold=threshold, epsilon=epsilon, min_sink_rate=min_sink_rate)
    rate = np.array(rep.sinks.per_token_sink_rate)
    T = capture.n_tokens
    sinks = set(np.flatnonzero(rate >= min_sink_rate))
    assert sinks == {s.position for s in rep.sinks.tokens}
    if layer is None:
        spikes = {s.position for s in rep.spikes.tokens}
        ratio = np.array(rep.spikes.per_token_score)
    else:  # at one layer: the same score, on that layer's norms (a [1, T] stack)
        norms = capture.resid_norm[layer]
        ratio = norms / np.median(norms)
        spikes = set(np.flatnonzero(ratio > threshold))
    pos = range(T) if positions is None else positions
    return spikes, {p for p in sinks if p in set(pos)}, ratio, rate, np.array(rep.sinks.per_token_mass)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
@pytest.mark.parametrize("candidates", [1000, 3, 70])  # 1000: every token through the fast path
def test_fast_mask_equals_the_definitions(make, candidates, monkeypatch):
    """Padded batch (llama: plain causal then padding masks; gemma3: sliding-window masks)."""
    probe = ModelProbe(wrap(make()))
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 99, (n,), generator=g).tolist() for n in (12, 7, 20, 90)]
    captures = [probe.run(s) for s in seqs]  # one by one: no padding on the reference side
    fast_only(probe, monkeypatch)
    masks = token_mask(probe, seqs, candidates=candidates, **LOW)
    n_spikes = n_sinks = 0
    for cap, m in zip(captures, masks):
        spikes, sinks, ratio, rate, mass = by_hand(cap)
        assert m.token_ids.tolist() == cap.token_ids
        assert set(np.flatnonzero(m.spike)) == spikes
        np.testing.assert_allclose(m.norm_ratio, ratio, rtol=1e-5)
        measured = np.flatnonzero(m.measured)
        if candidates >= cap.n_tokens:
            assert len(measured) == cap.n_tokens
        else:  # the first token, the spike tokens and the `candidates` largest
            assert 0 in measured and spikes <= set(measured) and len(measured) >= min(3, cap.n_tokens)
        np.testing.assert_allclose(m.sink_rate[measured], rate[measured], atol=1e-6)
        np.testing.assert_allclose(m.attn_mass[measured], mass[measured], atol=1e-6)
        assert set(np.flatnonzero(m.sink)) == {p for p in sinks if p in set(measured)}
        assert np.isnan(m.sink_rate[~m.measured]).all() and not m.sink[~m.measured].any()
        assert (m.masked == (m.spike | m.sink)).all() and (m.keep == ~m.masked).all()
        n_spikes, n_sinks = n_spikes + len(spikes), n_sinks + len(sinks)
    assert n_spikes and n_sinks  # both rules were exercised


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3_4], ids=["llama", "gemma3"])
def test_planted_spike_at_a_layer(make, monkeypatch):
    """A real spike (planted at layer UP_LAYER): peak and per-layer masks equal the definitions."""
    probe = ModelProbe(wrap(planted(make)))
    seqs = prompts()
    captures = probe.run_batch(seqs)
    fast_only(probe, monkeypatch)
    for layer in (None, 0, UP_LAYER):
        masks = token_mask(probe, seqs, layer=layer, threshold=10)
        for cap, m in zip(captures, masks):
            spikes, _, ratio, _, _ = by_hand(cap, layer=layer, threshold=10)
            assert set(np.flatnonzero(m.spike)) == spikes
            np.testing.assert_allclose(m.norm_ratio, ratio, rtol=1e-5)
            if layer is None:
                assert spikes == {0} and cap.token_ids[0] == SPIKE_TOKEN
    peak = spike_scores(captures[0].resid_norm)
    assert peak[0] > 10


def test_unsupported_attention_falls_back_to_the_exact_probe():
    """Softcapped logits: the fast path declines, the exact probe measures every token."""
    probe = ModelProbe(wrap(tiny_gemma3(attn_logit_softcapping=30.0)))
    seq = list(range(3, 15))
    m = mask_batch(probe, [seq], MaskSettings(**LOW).checked(2))[0]
    spikes, sinks, _, rate, _ = by_hand(probe.run(seq))
    assert m.measured.all() and set(np.flatnonzero(m.sink)) == sinks
    np.testing.assert_allclose(m.sink_rate, rate, atol=1e-6)


def test_all_tokens_take_the_exact_probe():
    probe = ModelProbe(wrap(tiny_gemma3()))
    seq = list(range(3, 40))
    m = token_mask(probe, seq, candidates=None, **LOW)
    _, sinks, _, rate, _ = by_hand(probe.run(seq))
    assert m.measured.all() and set(np.flatnonzero(m.sink)) == sinks
    np.testing.assert_allclose(m.sink_rate, rate, atol=1e-6)


def test_token_mask_inputs():
    probe = ModelProbe(wrap(tiny_llama()))
    one = token_mask(probe, [5, 6, 7, 8])
    assert len(one) == 4 and one.spike.dtype == bool  # a list of ints is one sequence
    many = token_mask(probe, [np.array([5, 6, 7]), torch.tensor([9, 10])])
    assert [len(m) for m in many] == [3, 2]
    assert len(token_mask(probe, torch.tensor([5, 6, 7]))) == 3  # a 1-D tensor is one sequence
    rows = token_mask(probe, np.array([[5, 6], [7, 8]]))  # a 2-D array is a batch of rows
    assert [m.token_ids.tolist() for m in rows] == [[5, 6], [7, 8]]
    for bad in ([], None, 3):
        with pytest.raises(SinkholeError):
            token_mask(probe, bad)
    with pytest.raises(SinkholeError, match="layer"):
        token_mask(probe, [5, 6], layer=2)  # two layers: 0 and 1


def suite(n=7, seed=3):
    g = torch.Generator().manual_seed(seed)
    items = [SuiteItem(i, torch.randint(1, 99, (4 + 3 * i,), generator=g).tolist(), "default") for i in range(n)]
    return Suite("test", items)


def test_mask_file_resumes_and_refuses_other_settings(tmp_path):
    probe = ModelProbe(wrap(tiny_llama()))
    s, settings, out = suite(), MaskSettings(**LOW), tmp_path / "m.npz"
    whole = run_mask(probe, s, tmp_path / "whole.npz", settings, max_batch=2)
    assert not parts_dir(tmp_path / "whole.npz").exists()

    def stop_after_two(n, seen=[]):  # noqa: B006  (counts this run's batches)
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_mask(probe, s, out, settings, max_batch=2, progress=stop_after_two)
    assert not out.exists() and len(list(parts_dir(out).glob("batch-*.npz"))) == 2
    with pytest.raises(SinkholeError, match="other settings.*threshold"):
        run_mask(probe, s, out, MaskSettings(**{**LOW, "threshold": 2.0}), max_batch=2)
    started, ran = [], []
    resumed = run_mask(probe, s, out, settings, max_batch=2, progress=ran.append, initial=started.append)
    assert started == [4] and sum(ran) == 3
    assert out.read_bytes() == (tmp_path / "whole.npz").read_bytes()  # same batches, same bytes
    f = load_mask(out)
    assert len(f) == len(s) and f.header["settings"]["threshold"] == LOW["threshold"]
    for i, it in enumerate(s.items):
        assert f[i].token_ids.tolist() == it.prompt
        for name in ("spike", "sink", "measured"):
            assert (getattr(f[i], name) == getattr(whole[i], name)).all()
        np.testing.assert_allclose(f[i].sink_rate, whole[i].sink_rate, atol=1e-6)
        np.testing.assert_allclose(resumed[i].norm_ratio, whole[i].norm_ratio, rtol=1e-6)
    assert not parts_dir(out).exists()


def test_cli_mask_end_to_end_and_bad_inputs(tiny_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    texts = tmp_path / "t.jsonl"
    texts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["the one of you", "it is in the a of to"]))
    out = tmp_path / "m.npz"
    code, _, err = run_cli(capsys, "mask", "--model", str(tiny_dir), "--texts", str(texts), "--npz", str(out))
    assert code == 0, err
    assert f"wrote {out}: 2 texts" in err
    f = load_mask(out)
    assert len(f) == 2 and f.header["settings"]["candidates"] == 16
    bad = [
        ["--texts", str(tmp_path / "missing.txt"), "--npz", str(out)],
        ["--texts", str(texts), "--npz", str(out), "--layer", "9"],
        ["--texts", str(texts), "--npz", str(out), "--threshold", "0"],
        ["--texts", str(texts), "--npz", str(tmp_path)],
        ["--texts", str(texts), "--npz", str(out), "--all-tokens", "--candidates", "3"],
    ]
    for argv in bad:
        code, _, err = run_cli(capsys, "mask", "--model", str(tiny_dir), *argv)
        lines = [ln for ln in err.splitlines() if ln.startswith("sinkhole: error:")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (argv, err)
    # interrupted after its first batch, the same command resumes
    import sinkhole.mask.store as store

    real = store.mask_batch
    calls = []

    def one_batch_then_ctrl_c(*a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    again = tmp_path / "again.npz"
    argv = ["mask", "--model", str(tiny_dir), "--texts", str(texts), "--npz", str(again), "--max-batch", "1"]
    monkeypatch.setattr(store, "mask_batch", one_batch_then_ctrl_c)
    code, _, err = run_cli(capsys, *argv)
    monkeypatch.setattr(store, "mask_batch", real)
    assert code == 130 and "interrupted" in err and not again.exists()
    code, _, err = run_cli(capsys, *argv)
    assert code == 0 and "resuming: 1 of 2 texts" in err
    assert (load_mask(again).arrays["token_ids"] == f.arrays["token_ids"]).all()
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SinkholeError, match="not a sinkhole mask file"):
        load_mask(tmp_path / "junk.npz")


@pytest.mark.integration
def test_smollm2_default_candidates_find_every_sink(smollm2, monkeypatch):
    """On a real model the default candidates (first token, spike tokens, 16 highest norms) hold every
    token the full definition calls a sink, and the flags equal analyze's."""
    probe = ModelProbe(smollm2)
    texts = [
        "The quick brown fox jumps over the lazy dog. Then it runs away, and the dog sleeps on.",
        "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
        "Attention sinks: the first token takes most of the attention in most heads. Why?",
    ]
    captures = [probe.run(t, chat=False) for t in texts]
    fast_only(probe, monkeypatch)
    for cap, m in zip(captures, token_mask(probe, texts)):
        rep = analyze(cap)
        assert set(np.flatnonzero(m.spike)) == {s.position for s in rep.spikes.tokens}
        assert set(np.flatnonzero(m.sink)) == {s.position for s in rep.sinks.tokens}
        assert m.sink.any() and m.spike.any() and not m.measured.all()
        rate = np.array(rep.sinks.per_token_sink_rate)
        np.testing.assert_allclose(m.sink_rate[m.measured], rate[m.measured], atol=1e-5)


def test_a_batch_cut_short_is_redone_whole(tmp_path):
    """Texts missing from a batch (a part that holds some of its texts only) are computed in the batch
    of an uninterrupted run again, so the file is the same to the last byte, not only within rounding."""
    from sinkhole.mask.store import npz_bytes, pack

    probe = ModelProbe(wrap(tiny_llama()))
    s, settings = suite(9, seed=5), MaskSettings(**LOW)
    whole = run_mask(probe, s, tmp_path / "whole.npz", settings, max_batch=3)
    from sinkhole.eval.runner import plan_batches

    assert [8, 7, 6] in plan_batches([len(it.prompt) for it in s.items], 4096, 3)
    parts = parts_dir(tmp_path / "m.npz")
    parts.mkdir()
    (parts / "run.json").write_text(json.dumps(whole.header))
    keep = [8, 6, 1]  # 8 and 6 share their batch with 7
    (parts / "batch-000001.npz").write_bytes(npz_bytes(indices=np.array(keep), **pack([whole[i] for i in keep])))
    ran = []
    run_mask(probe, s, tmp_path / "m.npz", settings, max_batch=3, progress=ran.append)
    assert sum(ran) == 6 and (tmp_path / "m.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()


def test_cli_mask_refuses_before_loading(tiny_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    """An empty texts file, or a run in OUT.parts with other settings: one line, and no model loaded."""
    import sinkhole.cli.common as common

    texts = tmp_path / "t.txt"
    texts.write_text("the one of you\nit is in the a of to\n")
    out = tmp_path / "m.npz"
    argv = ["mask", "--model", str(tiny_dir), "--texts", str(texts), "--npz", str(out), *("--threshold", "1.2")]

    def stop(*a, **k):  # a run that leaves its parts behind, as a kill would
        raise KeyboardInterrupt

    import sinkhole.mask.store as store

    monkeypatch.setattr(store, "mask_batch", stop)
    assert run_cli(capsys, *argv)[0] == 130 and (parts_dir(out) / "run.json").is_file()

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(common, "load_probe", no_load)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    for bad, message in [
        (["--texts", str(empty)], "holds no prompts"),
        (["--threshold", "2"], "other settings (settings.threshold 1.2 -> 2.0)"),
        (["--layer", "-1"], "layer"),
    ]:
        code, _, err = run_cli(capsys, *argv, *bad)
        lines = [ln for ln in err.splitlines() if ln.startswith("sinkhole: error:")]
        assert code == 2 and len(lines) == 1 and message in lines[0], (bad, err)
        assert "loading" not in err
