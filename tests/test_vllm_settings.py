"""sinkhole.vllm's settings, checked before vLLM starts: no vLLM needed (runs in the main venv)."""

from __future__ import annotations

import importlib.util

import pytest

from sinkhole.errors import SinkholeError
from sinkhole.vllm.settings import resolve_settings


def test_defaults_pin_four_tokens():
    st = resolve_settings("smollm2-135m", window=256, block_size=32)
    assert st.pinned == (0, 1, 2, 3) and st.window == 256 and st.architecture == "LlamaForCausalLM"
    assert st.hf_overrides() == {
        "architectures": ["SinkholeLlamaForCausalLM"],
        "sinkhole": {"window": 256, "pinned": [0, 1, 2, 3], "pin_blocks": 8},
    }


def test_profile_decides_the_pinned_positions(tmp_path):
    assert resolve_settings("smollm2-135m", profile="smollm2-135m", window=64, block_size=32).pinned == (0,)
    assert resolve_settings("smollm2-135m", n_sink=0, window=64, block_size=32).pinned == ()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(window=16, block_size=32), "smaller than one KV block"),
        (dict(window="many"), "window"),
        (dict(profile="nope"), "no shipped profile"),
        (dict(profile="smollm2-135m", n_sink=2), "not both"),
        (dict(profile="gemma3-270m"), "profile is for"),
    ],
)
def test_bad_settings_are_one_line(kwargs, message):
    with pytest.raises(SinkholeError) as err:
        resolve_settings("smollm2-135m", **{"window": 64, "block_size": 32, **kwargs})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_says_how_to_get_it():
    from sinkhole.vllm import SinkAwareLLM

    with pytest.raises(SinkholeError, match="make vllm-setup"):
        SinkAwareLLM(model="smollm2-135m")
