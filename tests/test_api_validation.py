"""The Python API checks what the CLI checks, with the same validators (sinkhole.validate): every
bad value the CLI refuses for the cache options is refused by HeadAwareSinkCache / SinkCache too,
with the same message under the API's argument name, and so are values only Python can pass
(10.7 for an integer, a string, None), a profile made for another model, and a model given by name.
"""

from __future__ import annotations

import math

import pytest
from conftest import bare_profile, tiny_gemma3, tiny_llama, wrap

from sinkhole.cache.head_aware import HeadAwareSinkCache
from sinkhole.cache.sink_cache import SinkCache
from sinkhole.errors import SinkholeError
from sinkhole.profiles.profile import SinkProfile, load_profile

LLAMA_SHAPE = {"architecture": "llama", "n_layers": 2, "n_kv_heads": 2, "d_model": 32}


def profile(model=None, streaming="default") -> SinkProfile:
    if streaming == "default":
        streaming = {"n_sink": 1, "window": 4, "scores": [[0.9, 0.1], [0.8, 0.7]]}
    return bare_profile(streaming, model={"name": "tiny", **LLAMA_SHAPE} if model is None else model)


GOOD = dict(window=4, budget=0.6, length=64, local_sinks=0)

# (API argument, CLI option dest, CLI flag, values the CLI's parser lets through to validation)
CLI_TWINS = [
    ("budget", "budget", "--budget", ["nan", "5", "0", "-0.5", "inf"]),
    ("window", "window", "--window", ["0", "-3"]),
    ("local_sinks", "local_sinks", "--local-sinks", ["-1"]),
    ("length", "tokens", "--tokens", ["1", "-5"]),
]


def _cli_error(flag: str, value: str, capsys) -> str:
    from sinkhole.cli.main import main

    code = main(["stream", "--recall", flag, value])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("sinkhole: error: ") and "\n" not in err
    return err.removeprefix("sinkhole: error: ")


@pytest.mark.parametrize("kw,dest,flag,value", [(kw, dest, flag, v) for kw, dest, flag, vs in CLI_TWINS for v in vs])
def test_every_cli_bad_value_is_refused_by_the_api_with_the_same_message(kw, dest, flag, value, capsys):
    cli = _cli_error(flag, value, capsys)
    assert cli.startswith(flag)
    py_value = float(value) if kw == "budget" else int(value)
    with pytest.raises(SinkholeError) as err:
        HeadAwareSinkCache.from_profile(profile(), model=tiny_llama(), **{**GOOD, kw: py_value})
    assert str(err.value) == kw + cli.removeprefix(flag)


@pytest.mark.parametrize(
    "kw,value,says",
    [
        ("window", 10.7, "window must be an integer at least 1, not 10.7: round it"),
        ("window", math.nan, "window must be an integer"),
        ("window", "8", "window must be an integer"),
        ("local_sinks", 2.5, "local_sinks must be an integer at least 0, not 2.5"),
        ("length", -5, "length must be at least 2, not -5"),
        ("budget", math.nan, "budget must be a finite number in (0, 1], not nan"),
        ("budget", 5, "budget must be in (0, 1], not 5"),
        ("n_sink", -1, "n_sink must be at least 0, not -1"),
        ("random_heads", 0.5, "random_heads must be an integer"),
    ],
)
def test_values_only_python_can_pass_are_refused(kw, value, says):
    with pytest.raises(SinkholeError) as err:
        HeadAwareSinkCache.from_profile(profile(), model=tiny_llama(), **{**GOOD, kw: value})
    assert says in str(err.value)


def test_constructor_uses_the_same_rules():
    m = tiny_llama()
    for kw, value, says in [
        ("window", math.nan, "window must be an integer"),  # was blamed on the budget
        ("window", 10.7, "window must be an integer at least 1, not 10.7"),
        ("local_sinks", 2.5, "local_sinks must be an integer"),
        ("n_sink", -1, "n_sink must be at least 0, not -1"),
    ]:
        with pytest.raises(SinkholeError) as err:
            HeadAwareSinkCache([[], []], model=m, **{kw: value})
        assert str(err.value).startswith(says)
    for bad, says in [
        (None, "retrieval must be a list"),
        ("01", "retrieval must be a list"),
        ([[0]], "retrieval lists 1 layers; the model has 2"),
        ([[0], [5]], "retrieval[1] head must be in [0, 1], not 5"),
        ([[0], [0.5]], "retrieval[1] head must be an integer"),
    ]:
        with pytest.raises(SinkholeError) as err:
            HeadAwareSinkCache(bad, model=m)
        assert says in str(err.value)


@pytest.mark.parametrize("cls", ["head-aware", "sink"])
def test_model_by_name_or_missing_is_a_clear_error(cls):
    make = (
        (lambda **kw: HeadAwareSinkCache.from_profile(profile(), **kw))
        if cls == "head-aware"
        else (lambda **kw: SinkCache.from_profile(profile(), **kw))
    )
    for model in ("smollm2-135m", None, 3):
        with pytest.raises(SinkholeError, match="needs the loaded model"):
            make(model=model)


@pytest.mark.parametrize(
    "scores",
    [
        [[math.nan, 0.1], [0.8, 0.7]],
        [["0.9", 0.1], [0.8, 0.7]],
        [[0.9, 1.5], [0.8, 0.7]],
        [[0.9, 0.1], []],
        "scores",
    ],
)
def test_bad_streaming_scores_are_refused(scores):
    p = profile(streaming={"n_sink": 1, "window": 4, "scores": scores})
    with pytest.raises(SinkholeError, match="streaming.scores must be a list of per-layer lists of numbers in"):
        HeadAwareSinkCache.from_profile(p, model=tiny_llama(), **GOOD)
    bad_copy = profile(streaming={"n_sink": 1, "window": 4, "scores": [[0.5, 0.5]] * 2, "copy_scores": scores})
    with pytest.raises(SinkholeError, match="streaming.copy_scores"):
        HeadAwareSinkCache.from_profile(bad_copy, model=tiny_llama(), **GOOD)


def test_a_profile_of_another_model_is_refused_as_the_cli_refuses_it():
    gemma = load_profile("gemma3-270m")  # the shipped Gemma-3 profile, for a Llama model
    for make in (
        lambda: HeadAwareSinkCache.from_profile(gemma, model=tiny_llama(), **GOOD),
        lambda: SinkCache.from_profile(gemma, model=tiny_llama()),
    ):
        with pytest.raises(SinkholeError, match=r"^profile is for gemma3-270m \(architecture gemma3_text"):
            make()
    # Same architecture, other shape: still refused.
    other = profile(model={"name": "big", **LLAMA_SHAPE, "n_layers": 30})
    with pytest.raises(SinkholeError, match="n_layers 30"):
        HeadAwareSinkCache.from_profile(other, model=tiny_llama(), **GOOD)
    # A LoadedModel also brings its weights id, compared as the CLI compares it.
    lm = wrap(tiny_llama(), name="tiny")
    lm.weights_id = "dir:abc"
    mine = profile(model={"name": "tiny", "weights_id": "dir:xyz", **LLAMA_SHAPE})
    with pytest.raises(SinkholeError, match="profile is for tiny \\(weights dir:xyz"):
        SinkCache.from_profile(mine, model=lm)
    gemma3 = tiny_gemma3()
    with pytest.raises(SinkholeError, match="architecture llama"):
        SinkCache.from_profile(profile(), model=gemma3)


def test_profile_dicts_are_read_as_profiles_and_non_profiles_named():
    p = profile()
    cache = HeadAwareSinkCache.from_profile(p.to_dict(), model=tiny_llama(), **GOOD)
    assert cache.retrieval == [[1], [1]]
    with pytest.raises(SinkholeError, match="the profile dict is not a sinkhole profile"):
        HeadAwareSinkCache.from_profile({"streaming": p.streaming}, model=tiny_llama(), **GOOD)
    with pytest.raises(SinkholeError, match="profile must be a SinkProfile"):
        SinkCache.from_profile("smollm2-135m", model=tiny_llama())


def test_good_values_still_build_the_same_caches():
    m = tiny_llama()
    a = HeadAwareSinkCache.from_profile(profile(), model=m, **GOOD)
    b = HeadAwareSinkCache.from_profile(profile(), model=wrap(m), **GOOD)  # a LoadedModel works too
    assert a.retrieval == b.retrieval == [[1], [1]]
    assert SinkCache.from_profile(profile(), model=m, window=6).pinned == (0,)
