"""Retrieval heads that keep the keys the question chooses (`sinkhole.cache.kv_select`): the same keys
and logits as SnapKV when every head selects, exact masks in mixed layers, and a plan whose bytes are
what the cache holds. Tiny random models (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import bare_profile, tiny_gemma3, tiny_llama

from sinkhole.cache.head_aware import HeadAwareSinkCache, head_aware_attention
from sinkhole.cache.kv_select import Select, Selection
from sinkhole.errors import SinkholeError


@torch.inference_mode()
def feed(model, cache, ids, spans, attention):
    """Logits of every span's forward, concatenated (B, T, V)."""
    out = []
    with attention(model):
        for s, e in spans:
            out.append(model(ids[:, s:e], cache=cache, use_cache=True).logits)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("kernel", [1, 5])
def test_every_head_selecting_is_snapkv(kernel):
    """All heads of a Llama select: the keys kept and every logit after the prompt are SnapKV's."""
    from sinkhole.kvbench.snapkv import SnapKVCache, snapkv_attention

    model = tiny_llama(seed=3)
    torch.manual_seed(0)
    ids = torch.randint(3, 99, (2, 54))
    P, window, capacity = 48, 6, 20
    spans = [(0, 30), (30, 42), (42, P), (P, 51), (51, 52), (52, 54)]  # decode past max_new: it grows
    snap = SnapKVCache(model=model, capacity=capacity, prompt_length=P, window=window, kernel=kernel, max_new=4)
    want = feed(model, snap, ids, spans, snapkv_attention)
    H = model.config.num_key_value_heads
    sel = Selection(capacity, P, window=window, kernel=kernel, max_new=4)
    cache = HeadAwareSinkCache([list(range(H))] * 2, 2, 8, model=model, select=sel)
    got = feed(model, cache, ids, spans, head_aware_attention)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert cache.kv_bytes() == snap.kv_bytes()  # 2 layers x (capacity + 4, doubled once) slots per head
    with torch.inference_mode():
        dense = model(ids, use_cache=False).logits
    assert (dense[:, P:] - got[:, P:]).abs().max() > 1e-3  # and it is not dense attention


def test_mixed_layer_matches_masked_attention():
    """One layer, head 0 selecting and head 1 streaming (sinks + window): the 4 tokens after the
    prompt equal eager attention with each head masked to what it holds."""
    from sinkhole.cache.kv_select import select_keys, window_scores
    from sinkhole.probe.hooks import attention_implementation

    model = tiny_llama(seed=5, num_hidden_layers=1)
    torch.manual_seed(1)
    ids = torch.randint(3, 99, (1, 44))
    P, window, capacity, S, W = 40, 4, 14, 2, 8
    cache = HeadAwareSinkCache([[0]], S, W, model=model, select=Selection(capacity, P, window=window, kernel=3))
    got = feed(model, cache, ids, [(0, 36), (36, P), (P, 44)], head_aware_attention)[:, P:]
    # the selection, recomputed from the layer's own queries and keys
    query, key = capture_qk(model, ids[:, :P])
    scaling = model.model.layers[0].self_attn.scaling
    kept = select_keys(window_scores(query[:, :, P - window :], key, scaling, window), capacity, window, 3)
    T, Hq = ids.shape[1], model.config.num_attention_heads
    G = Hq // 2
    allowed = torch.ones(Hq, T, T, dtype=torch.bool).tril()
    for h in range(Hq):
        row = torch.zeros(T, dtype=torch.bool)
        if h // G == 0:
            row[kept[0, 0]] = True
        else:
            row[:S] = True
        if h // G == 0:
            row[P:] = True
            allowed[h, P:] &= row
        else:  # sinks + the last W keys of each query
            for t in range(P, T):
                allowed[h, t] &= row | (torch.arange(T) > t - W)
    mask = torch.zeros(1, Hq, T, T).masked_fill(~allowed, float("-inf"))
    with attention_implementation(model, "eager"), torch.inference_mode():
        want = model(ids, attention_mask=mask, use_cache=False).logits[:, P:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_sliding_layer_selection_matches_masked_attention():
    """A sliding-window layer (window 16): head 0 keeps 8 of the 16 keys its window shows the
    prompt's last query (`SlidingSelect`), head 1 a window of 6. Twelve tokens after the prompt, in
    steps and one chunk, equal eager attention with each head masked to what it holds, the kept keys
    leaving as they fall 16 positions behind (the model's own window)."""
    from sinkhole.cache.kv_select import SlidingSelect, select_keys, window_scores
    from sinkhole.probe.hooks import attention_implementation

    SW, P, window, capacity, W = 16, 40, 4, 8, 6
    model = tiny_gemma3(
        seed=6, num_hidden_layers=1, num_key_value_heads=2, sliding_window=SW, layer_types=["sliding_attention"]
    )
    torch.manual_seed(2)
    ids = torch.randint(3, 99, (1, P + 12))
    T = ids.shape[1]
    sel = Selection(capacity, P, window=window, kernel=3, max_new=4, share=0.5, sliding=True)
    cache = HeadAwareSinkCache([[0]], 0, W, model=model, select=sel)
    assert isinstance(cache.layers[0].full, SlidingSelect)
    spans = [(0, 20), (20, 34), (34, P), (P, P + 1), (P + 1, P + 2), (P + 2, P + 6)] + [
        (t, t + 1) for t in range(P + 6, T)
    ]
    got = feed(model, cache, ids, spans, head_aware_attention)[:, P:]
    # the selection, recomputed from the layer's own queries and keys, over the keys the window shows
    query, key = capture_qk(model, ids[:, :P])
    qp, kp = torch.arange(P - window, P)[:, None], torch.arange(P)[None, :]
    scores = window_scores(
        query[:, :, P - window :], key, model.model.layers[0].self_attn.scaling, window, (kp <= qp) & (kp > qp - SW)
    )
    kept = select_keys(scores[..., P - SW :], capacity, window, 3)[0, 0] + P - SW
    t_, p_ = torch.arange(T)[:, None], torch.arange(T)[None, :]
    in_window = (p_ <= t_) & (p_ > t_ - SW)
    G = model.config.num_attention_heads // 2
    allowed = in_window.repeat(G * 2, 1, 1)
    held = torch.zeros(T, dtype=torch.bool)
    held[kept], held[P:] = True, True
    allowed[:G, P:] &= held
    allowed[G:, P:] &= (p_ > t_ - W)[P:]  # the streaming head: the last W keys
    mask = torch.zeros(1, 2 * G, T, T).masked_fill(~allowed, float("-inf"))
    with attention_implementation(model, "eager"), torch.inference_mode():
        want = model(ids, attention_mask=mask, use_cache=False).logits[:, P:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    store = cache.layers[0].full  # 8 kept + 12 after: capacity + max_new doubled once
    assert store.k.shape[2] == 2 * (capacity + 4) and store.used_slots(T) == capacity + 12
    assert store.nbytes() == store.planned_nbytes(T, 2 * 8 * 4)  # key + value, float32, head dim 8


def test_sliding_selection_keeps_only_keys_in_reach():
    """Keys the prompt's earlier queries saw but its last one cannot are never kept, however much
    attention they drew; of those in reach the best-scored are, in position order."""
    from sinkhole.cache.kv_select import SlidingSelect

    store = SlidingSelect(capacity=6, sliding=10, prompt_length=30, window=2, kernel=1)
    k = torch.randn(1, 1, 30, 4)
    store.update(k[:, :, :24], k[:, :, :24], 0)
    keys, _, mask, observe = store.update(k[:, :, 24:], k[:, :, 24:], 24)
    positions = torch.tensor(store.prompt.held_positions(24) + list(range(24, 30)))
    assert mask.shape == (6, 16) and observe.window == 2
    scores = torch.zeros(1, 1, 16)
    scores[0, 0, positions < 20] = 10.0  # out of reach of position 29: drew the most
    scores[0, 0, positions == 21], scores[0, 0, positions == 25] = 3.0, 2.0
    scores[0, 0, positions == 20], scores[0, 0, positions == 23] = 1.5, 1.0
    observe(scores)
    assert store.pos[0, 0, : store.held].tolist() == [20, 21, 23, 25, 28, 29]
    torch.testing.assert_close(store.k[0, 0, :6], k[0, 0, [20, 21, 23, 25, 28, 29]])


def capture_qk(model, ids):
    """(query (B, Hq, T, D), key (B, Hkv, T, D)) of layer 0 after RoPE, from a plain forward."""
    from transformers import AttentionInterface

    got = {}

    def grab(module, query, key, value, attention_mask, **kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        got["qk"] = (query, key)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("test_grab_qk", grab)
    old = model.config._attn_implementation
    model.set_attn_implementation("test_grab_qk")
    try:
        with torch.inference_mode():
            model(ids, use_cache=False)
    finally:
        model.set_attn_implementation(old)
    return got["qk"]


@pytest.mark.parametrize("which", ["llama", "gemma3"])
def test_plan_with_selection_holds_what_it_says(which):
    """from_profile(select=...): selecting heads cost capacity + the tokens after the prompt; the plan's
    bytes are the cache's at the end, within the budget, with more heads kept than whole heads allow."""
    if which == "llama":
        model = tiny_llama()
    else:
        model = tiny_gemma3(num_key_value_heads=2, max_position_embeddings=512, sliding_window=100)
    H, L = model.config.num_key_value_heads, model.config.num_hidden_layers
    profile = bare_profile(
        {"n_sink": 2, "window": 8, "scores": [[0.1 * (h + H * l) for h in range(H)] for l in range(L)]}
    )
    P, n = 200, 203
    plan = dict(window=8, local_sinks=4, n_sink=2, budget=0.5, length=n)
    whole = HeadAwareSinkCache.from_profile(profile, model=model, **plan).memory_plan
    cache = HeadAwareSinkCache.from_profile(profile, model=model, select=0.2, prompt_length=P, **plan)
    mp = cache.memory_plan
    assert mp.select["capacity"] == 40 and mp.select["max_new"] == 3
    assert mp.retrieval_heads > whole.retrieval_heads
    ids = torch.randint(3, 99, (1, n), generator=torch.Generator().manual_seed(0))
    feed(model, cache, ids, [(0, 100), (100, 168), (168, P), (P, n)], head_aware_attention)
    assert cache.kv_bytes() == mp.kv_bytes <= 0.5 * mp.dense_bytes
    assert cache.used_slots() == mp.kv_slots
    assert "keys chosen at the prompt's end" in mp.line()
    if which == "gemma3":  # sliding retrieval heads: 20% of a 100-key window, raised to window + 1 = 33
        from sinkhole.cache.kv_select import SlidingSelect

        layer = cache.layers[0]
        assert isinstance(layer.full, SlidingSelect) and layer.retrieval and layer.full.held == 33 + 3


def test_selection_refuses_what_it_cannot_do():
    model = tiny_llama()
    profile = bare_profile({"n_sink": 2, "window": 8, "scores": [[0.1, 0.2]] * 2})
    kw = dict(model=model, budget=0.5, window=8, n_sink=2, local_sinks=0)
    with pytest.raises(SinkholeError, match="needs prompt_length"):
        HeadAwareSinkCache.from_profile(profile, length=100, select=0.3, **kw)
    with pytest.raises(SinkholeError, match="past length"):
        HeadAwareSinkCache.from_profile(profile, length=100, select=0.3, prompt_length=120, **kw)
    with pytest.raises(SinkholeError, match="select must be"):
        HeadAwareSinkCache.from_profile(profile, length=100, select=1.5, prompt_length=90, **kw)
    with pytest.raises(SinkholeError, match="nothing to choose"):
        HeadAwareSinkCache.from_profile(profile, length=100, select=0.99, prompt_length=40, **kw)
    store = Select(10, 40, 4)
    k = torch.zeros(1, 1, 30, 8)
    store.update(k, k, 0)
    with pytest.raises(SinkholeError, match="past the prompt's end"):
        store.update(torch.zeros(1, 1, 20, 8), torch.zeros(1, 1, 20, 8), 30)
    # without its attention function nothing is selected, and the cache says so at the next forward
    cache = HeadAwareSinkCache([[0, 1]] * 2, 2, 8, model=model, select=Selection(10, 40, window=4))
    with pytest.raises(SinkholeError, match="head_aware_attention"), torch.inference_mode():
        model(torch.randint(3, 99, (1, 40)), cache=cache, use_cache=True)
        model(torch.randint(3, 99, (1, 1)), cache=cache, use_cache=True)


def test_whole_selecting_and_streaming_heads_in_one_layer():
    """Three groups in one layer: head 0 whole, head 1 selecting, head 2 sinks + window. The tokens
    after the prompt equal eager attention with each head masked to what it holds."""
    from sinkhole.cache.kv_select import select_keys, window_scores
    from sinkhole.probe.hooks import attention_implementation

    model = tiny_llama(seed=7, num_hidden_layers=1, hidden_size=48, num_attention_heads=6, num_key_value_heads=3)
    torch.manual_seed(3)
    ids = torch.randint(3, 99, (1, 46))
    P, window, capacity, S, W = 40, 4, 14, 2, 8
    sel = Selection(capacity, P, window=window, kernel=3, max_new=6)
    cache = HeadAwareSinkCache([[1]], S, W, model=model, select=sel, whole=[[0]])
    got = feed(model, cache, ids, [(0, 36), (36, P), (P, 43), (43, 44), (44, 46)], head_aware_attention)[:, P:]
    query, key = capture_qk(model, ids[:, :P])
    scaling = model.model.layers[0].self_attn.scaling
    kept = select_keys(window_scores(query[:, :, P - window :], key, scaling, window), capacity, window, 3)
    T, G = ids.shape[1], 2
    allowed = torch.ones(6, T, T, dtype=torch.bool).tril()
    t_, p_ = torch.arange(T)[:, None], torch.arange(T)[None, :]
    row = torch.zeros(T, dtype=torch.bool)
    row[kept[0, 1]], row[P:] = True, True
    allowed[G : 2 * G, P:] &= row  # head 1: its selection and what follows
    allowed[2 * G :, P:] &= ((p_ < S) | (p_ > t_ - W))[P:]  # head 2: sinks + the last W
    mask = torch.zeros(1, 6, T, T).masked_fill(~allowed, float("-inf"))
    with attention_implementation(model, "eager"), torch.inference_mode():
        want = model(ids, attention_mask=mask, use_cache=False).logits[:, P:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    with pytest.raises(SinkholeError, match="cannot also be retrieval heads"):
        HeadAwareSinkCache([[0, 1]], S, W, model=model, select=sel, whole=[[0]])


@pytest.mark.parametrize("which", ["llama", "gemma3"])
def test_fill_whole_spends_what_the_selection_leaves(which):
    """from_profile(select=..., fill_whole=True): every head selects at a small share, and the room
    left keeps the ranking's first selecting heads whole; the plan's bytes and slots are the cache's
    at the end, within the budget; the random control draws other heads."""
    if which == "llama":
        model = tiny_llama(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4)
    else:
        model = tiny_gemma3(num_key_value_heads=2, max_position_embeddings=512, sliding_window=100)
    H, L = model.config.num_key_value_heads, model.config.num_hidden_layers
    profile = bare_profile(
        {"n_sink": 2, "window": 8, "scores": [[(h + H * l) / (H * L) for h in range(H)] for l in range(L)]}
    )
    P, n = 200, 203
    plan = dict(window=8, local_sinks=4, n_sink=2, budget=0.5, length=n, select=0.15, prompt_length=P)
    sel = HeadAwareSinkCache.from_profile(profile, model=model, **plan).memory_plan
    cache = HeadAwareSinkCache.from_profile(profile, model=model, fill_whole=True, **plan)
    mp = cache.memory_plan
    assert sel.whole is None and mp.whole and mp.retrieval_heads == sel.retrieval_heads == H * L
    order = sorted((h + H * l, l, h) for l in range(L) for h in range(H))
    first = {(l, h) for l, row in enumerate(mp.whole) for h in row}
    assert sel.bytes_share < mp.bytes_share <= 0.5
    if which == "llama":  # every layer costs the same: the whole heads are the ranking's first
        assert first == {(l, h) for _, l, h in order[: len(first)]}
    ids = torch.randint(3, 99, (1, n), generator=torch.Generator().manual_seed(0))
    feed(model, cache, ids, [(0, 100), (100, 168), (168, P), (P, n)], head_aware_attention)
    assert cache.kv_bytes() == mp.kv_bytes <= 0.5 * mp.dense_bytes
    assert cache.used_slots() == mp.kv_slots
    assert "of them whole" in mp.line()
    rnd = HeadAwareSinkCache.from_profile(profile, model=model, fill_whole=True, random_heads=1, **plan).memory_plan
    assert sum(map(len, rnd.whole)) >= 1 and rnd.kv_bytes <= 0.5 * rnd.dense_bytes
    if which == "llama":
        assert rnd.whole != mp.whole
