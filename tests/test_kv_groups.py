"""benchmarks/kv_groups.py's variant specs (no model)."""

import pytest
from conftest import benchmark_script

from sinkhole.errors import SinkholeError


def load():
    return benchmark_script("kv_groups")


def test_layer_sets_take_single_layers_plus_and_inclusive_ranges():
    kg = load()
    assert kg.layer_set("5", 18) == [5]
    assert kg.layer_set("5+11+17", 18) == [5, 11, 17]
    assert kg.layer_set("0-2+7", 18) == [0, 1, 2, 7]
    for bad in ("18", "x", "3-", "-1", "1+5-3"):
        with pytest.raises(SinkholeError):
            kg.layer_set(bad, 18)


def test_variants_override_only_the_layers_named_and_leave_the_plan_alone():
    kg = load()
    retrieval, whole = [[0], [], [1], [0, 1]], [[], [0], [], []]
    assert kg.variant_heads("plan", retrieval, whole, 2, select=False) == (retrieval, whole)
    r, w = kg.variant_heads("whole:2/stream:3", retrieval, whole, 2, select=False)
    assert r == [[0], [], [], []] and w == [[], [0], [0, 1], []]
    r, w = kg.variant_heads("select:1", retrieval, whole, 2, select=True)
    assert r == [[0], [0, 1], [1], [0, 1]] and w == [[], [], [], []]
    assert retrieval == [[0], [], [1], [0, 1]] and whole == [[], [0], [], []]  # not modified in place
    with pytest.raises(SinkholeError, match="needs --select"):
        kg.variant_heads("select:1", retrieval, whole, 2, select=False)
    with pytest.raises(SinkholeError, match="whole:L, stream:L or select:L"):
        kg.variant_heads("keep:1", retrieval, whole, 2, select=False)


def test_repeated_share_counts_the_answer_ngrams_found_in_the_prompt():
    kg = load()
    prompt = list(range(20))
    assert kg.repeated_share(prompt, [3, 4, 5, 6], n=3) == 1.0
    assert kg.repeated_share(prompt, [3, 4, 5, 99, 100], n=3) == 1 / 3
    assert kg.repeated_share(prompt, [1, 2], n=3) == 0.0  # shorter than one n-gram
