"""Counts of work are bounded and name lists are exact (issue 25): a typo like 10^12 is refused
at once instead of hanging or running for days, `lab --variants ''` is an error rather than all
nine variants, a name given twice is refused rather than trained twice, and the profile's
streaming prompts are built one at a time (a large count costs nothing before the first forward)."""

from __future__ import annotations

import pytest

from sinkhole.errors import SinkholeError


@pytest.mark.parametrize(
    "argv,message",
    [
        (["profile", "--stream-prompts", "1000000000000"], "--stream-prompts must be in [1, 1024], not 1000000000000"),
        (["lab", "--steps", "1000000000000"], "--steps must be in [1, 100000], not 1000000000000"),
        (["quant", "--heldout-seqs", "1000000000"], "--heldout-seqs must be in [1, 1024], not 1000000000"),
        (["quant", "--calib-seqs", "5000"], "--calib-seqs must be in [1, 1024], not 5000"),
        (["lab", "--d-model", "7"], "--d-model must be in [8, 4096], not 7"),
        (["lab", "--layers", "1000"], "--layers must be in [1, 64], not 1000"),
        (["lab", "--variants", ""], "--variants names nothing: give one or more of baseline,"),
        (["lab", "--variants", " , "], "--variants names nothing"),
        (["lab", "--variants", "baseline,baseline"], "--variants names baseline more than once"),
        (["lab", "--variants", "gated,basline"], "unknown name 'basline' (did you mean 'baseline'?)"),
    ],
)
def test_cli_refuses_at_once(argv, message, tmp_path, capsys):
    from sinkhole.cli.main import main

    if argv[0] == "lab":
        argv = [*argv, "--out", str(tmp_path / "lab")]
    elif argv[0] == "profile":
        argv = [*argv, "--json", str(tmp_path / "p.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_lab_api_refuses_a_variant_twice():
    from sinkhole.lab.run import LabSettings, check_settings

    with pytest.raises(SinkholeError, match="more than once"):
        check_settings(LabSettings(variants=("baseline", "baseline")))


def test_streaming_prompts_are_built_when_read(monkeypatch):
    import sinkhole.experiments.head_scores as st

    built = []
    monkeypatch.setattr(st, "copy_prompt", lambda tok, n, span, n_spans, seed, text: built.append(seed) or seed)
    prompts = st.streaming_prompts(object(), count=10**6, n_tokens=1024, seed=5)
    assert len(prompts) == 10**6 and built == []  # nothing built up front
    assert prompts[3] == 8 and built == [8]
    with pytest.raises(IndexError):
        prompts[10**6]


def test_prompt_lengths_are_checked_without_building_prompts():
    from conftest import tiny_llama, wrap

    from sinkhole.experiments.head_scores import measure_streaming_scores

    class Unbuildable(list):
        lengths = [64] * 3

        def __getitem__(self, i):
            raise AssertionError("built a prompt")

    with pytest.raises(SinkholeError, match="a 64-token prompt is too short for sinks 4 \\+ window 64"):
        measure_streaming_scores(wrap(tiny_llama()), Unbuildable(), n_sink=4, window=64)
