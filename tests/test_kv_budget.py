"""HeadAwareSinkCache's budget is in bytes: `from_profile(budget=b, length=n)` allocates at most b x a
dense cache's key and value bytes at n tokens (and past n), says so in its `memory_plan`, and refuses
a budget it cannot meet. Tiny random models (tests/conftest.py), lengths that are not powers of two."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import bare_profile, tiny_gemma3, tiny_llama

from sinkhole.cache.head_aware import HeadAwareSinkCache, head_aware_attention
from sinkhole.cache.kv_stores import Grow
from sinkhole.cache.sink_cache import cache_nbytes
from sinkhole.errors import SinkholeError

PLAN = dict(window=8, local_sinks=4, n_sink=2)


def profile_for(model):
    """Streaming scores that rank every head (distinct, so the plan is deterministic)."""
    H, L = model.config.num_key_value_heads, model.config.num_hidden_layers
    return bare_profile(
        {"n_sink": 2, "window": 8, "scores": [[0.1 * (h + H * l) for h in range(H)] for l in range(L)]}
    )


@torch.inference_mode()
def stream(model, cache, n, chunk=13, seed=0):
    ids = torch.randint(1, 99, (1, n), generator=torch.Generator().manual_seed(seed))
    with head_aware_attention(model):
        for s in range(0, n, chunk):
            model(ids[:, s : s + chunk], cache=cache, use_cache=True)
    return ids


@torch.inference_mode()
def dense_bytes(model, ids) -> int:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(ids, cache=cache, use_cache=True)
    return cache_nbytes(cache)


@pytest.mark.parametrize("n", [37, 100, 203])
@pytest.mark.parametrize("budget", [0.5, 0.8])
def test_llama_cache_holds_at_most_budget_times_dense_bytes(n, budget):
    model = tiny_llama()
    cache = HeadAwareSinkCache.from_profile(profile_for(model), model=model, budget=budget, length=n, **PLAN)
    plan = cache.memory_plan
    ids = stream(model, cache, n)
    assert plan.dense_bytes == dense_bytes(model, ids)  # the plan's dense is DynamicCache's
    assert cache.kv_bytes() == plan.kv_bytes  # the plan is what is allocated, not an estimate
    assert cache.kv_bytes() <= budget * plan.dense_bytes
    assert cache.used_slots() == plan.kv_slots
    assert plan.length == n and plan.length_from == "length"
    json.dumps(plan.to_dict())


def test_the_plan_keeps_heads_whole_and_a_doubling_buffer_would_not_fit():
    """At 203 tokens the plan keeps 2 of 4 heads whole; the same heads in buffers that double (256
    slots, as before budgets were bytes) pass the budget: the sizing is what keeps it."""
    model = tiny_llama()
    n, budget = 203, 0.6
    cache = HeadAwareSinkCache.from_profile(profile_for(model), model=model, budget=budget, length=n, **PLAN)
    assert cache.memory_plan.retrieval_heads == 2
    stream(model, cache, n)
    doubling = HeadAwareSinkCache(cache.retrieval, 2, 8, model=model, local_sinks=4)
    stream(model, doubling, n)
    assert cache.kv_bytes() <= budget * cache.memory_plan.dense_bytes < doubling.kv_bytes()


@pytest.mark.parametrize("n", [41, 150])
def test_gemma3_sliding_and_global_layers(n):
    model = tiny_gemma3(num_key_value_heads=2, max_position_embeddings=512)
    cache = HeadAwareSinkCache.from_profile(profile_for(model), model=model, budget=0.75, length=n, **PLAN)
    plan = cache.memory_plan
    stream(model, cache, n, chunk=1 if n < 50 else 11)
    # dense: every position on the global layer, the own window (4) on the sliding one; 2 KV heads, head dim 8
    assert plan.dense_bytes == 2 * (n + 4) * 2 * 8 * 4
    assert plan.retrieval[1]  # a global head is kept whole
    assert cache.kv_bytes() == plan.kv_bytes <= 0.75 * plan.dense_bytes


def test_past_the_planned_length_the_budget_still_holds():
    model = tiny_llama()
    cache = HeadAwareSinkCache.from_profile(profile_for(model), model=model, budget=0.6, length=90, **PLAN)
    ids = stream(model, cache, 173, chunk=1)  # decoding past the plan: buffers grow to what they hold
    assert cache.memory_plan.retrieval_heads > 0
    assert cache.kv_bytes() <= 0.6 * dense_bytes(model, ids)
    assert all(layer.full.k is None or layer.full.k.shape[2] == 173 for layer in cache.layers)


def test_a_budget_sinks_and_window_alone_pass_is_refused():
    model = tiny_llama()
    with pytest.raises(SinkholeError, match=r"budget 20% of dense KV memory is below .* \(45% at 37 tokens\)") as err:
        HeadAwareSinkCache.from_profile(profile_for(model), model=model, budget=0.2, length=37, **PLAN)
    assert "\n" not in str(err.value)
    ok = HeadAwareSinkCache.from_profile(profile_for(model), model=model, budget=0.5, length=37, **PLAN)
    assert ok.memory_plan.retrieval_heads == 0 and ok.memory_plan.bytes_share <= 0.5


def test_without_length_the_plan_says_it_is_for_the_trained_context():
    model = tiny_llama()
    with pytest.warns(UserWarning, match="no length given, so the budget is planned at 256 tokens"):
        cache = HeadAwareSinkCache.from_profile(profile_for(model), model=model, budget=0.5, **PLAN)
    assert (cache.memory_plan.length, cache.memory_plan.length_from) == (256, "trained context")
    assert "at 256 tokens (trained context)" in cache.memory_plan.line()
    assert cache.summary()["plan"]["kv_bytes"] == cache.memory_plan.kv_bytes


def test_random_heads_plan_counts_the_heads_it_drew():
    model = tiny_llama(num_key_value_heads=4, num_attention_heads=4)
    cache = HeadAwareSinkCache.from_profile(
        profile_for(model), model=model, budget=0.6, length=120, random_heads=3, **PLAN
    )
    plan = cache.memory_plan
    assert plan.random_heads == 3 and plan.retrieval == cache.retrieval
    stream(model, cache, 120)
    assert cache.kv_bytes() == plan.kv_bytes <= 0.6 * plan.dense_bytes


@pytest.mark.parametrize(
    "limit,n,chunk,slots", [(None, 1030, 1, 2048), (1030, 1030, 1, 1030), (1030, 1030, 100, 1030), (300, 517, 50, 517)]
)
def test_grow_stops_doubling_at_its_limit(limit, n, chunk, slots):
    g = Grow(limit)
    for s in range(0, n, chunk):
        q = min(chunk, n - s)
        g.update(torch.zeros(1, 1, q, 2), torch.zeros(1, 1, q, 2), s)
    assert g.k.shape[2] == slots == g.allocated_slots(n)
