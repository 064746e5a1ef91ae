"""Error messages say what is wrong (issue 25 item 6): an uncached hub id is "not in the local Hugging
Face cache", not transformers' "couldn't connect to huggingface.co" (nothing connects), and
`stream --recall` is not told about `--cache`, which it does not use. (`lab --d-model 7`: tests/
test_bounds.py; a NaN window or a profile dict given to the caches: tests/test_api_validation.py.)"""

from __future__ import annotations

import pytest

from sinkhole.errors import SinkholeError


def test_uncached_hub_id_says_not_in_the_cache(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from sinkhole.cli.main import main
    from sinkhole.models.registry import resolve

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path))
    with pytest.raises(SinkholeError) as err:
        resolve("org/not-there")
    msg = str(err.value)
    assert f"'org/not-there' is not in the local Hugging Face cache (HF_HOME={tmp_path}" in msg
    assert "never downloads" in msg and "connect" not in msg and "\n" not in msg
    assert main(["analyze", "--model", "org/not-there", "--prompt", "hi"]) == 2
    assert "not in the local Hugging Face cache" in capsys.readouterr().err
    (tmp_path / "hub" / "models--org--here").mkdir(parents=True)  # cached: left to transformers
    assert resolve("org/here").path == "org/here"


def test_recall_is_told_about_its_own_minimum_not_cache(capsys):
    from sinkhole.cli.main import main
    from sinkhole.validate import RECALL_MIN_TOKENS

    assert main(["stream", "--recall", "--tokens", "64"]) == 2
    err = capsys.readouterr().err
    assert "--recall streams hold 4 copied spans" in err and f"at least {RECALL_MIN_TOKENS}" in err
    assert "--cache" not in err
    assert main(["stream", "--tokens", "64"]) == 2  # without --recall, --cache is the point
    assert "fits in --cache 256" in capsys.readouterr().err


def test_recall_minimum_is_what_copy_prompt_needs(tmp_path):
    """The CLI's bound covers the copy streams' own layout: 520 tokens plus what the tokenizer puts
    first build, one less does not, and RECALL_MIN_TOKENS leaves room for a lead of up to 8."""
    from faults_common import save_tiny
    from transformers import AutoTokenizer

    from sinkhole.profiles.stream_scores import copy_prompt
    from sinkhole.validate import RECALL_MIN_TOKENS

    tok = AutoTokenizer.from_pretrained(save_tiny(tmp_path))
    lead = len(tok("", add_special_tokens=True)["input_ids"])
    need = 520 + lead
    assert copy_prompt(tok, need, span=32, n_spans=4).ids.shape[1] == need
    with pytest.raises(SinkholeError, match="cannot fit 4 spans of 32 tokens"):
        copy_prompt(tok, need - 1, span=32, n_spans=4)
    assert RECALL_MIN_TOKENS == 520 + 8
