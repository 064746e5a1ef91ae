"""Local sinks in HeadAwareSinkCache (`kv_stores.LocalSinkRing`): the keys that drew the most attention
while in the window keep a slot after they leave it.

The reference is an independent eager simulation of the policy on one decoder layer (whose keys and
values do not depend on what the cache forgot): per KV head, before each forward call starting at
position n, every key at a position <= n - W that has left the window competes, with the attention
it received while in the window, for the M local-sink slots; each query attends to the sinks, the
local sinks (within the layer's own sliding window) and its last W keys."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gemma3, tiny_llama

from sinkhole.cache.head_aware import HeadAwareSinkCache, head_aware_attention
from sinkhole.cache.head_plan import rank_scores, slot_costs
from sinkhole.cache.kv_stores import LocalSinkRing

BIG = dict(initializer_range=0.3)


def simulate(q, k, v, scaling, S, M, W, chunk, sliding=None):
    """One KV head: q (G, T, D), k, v (T, D). Returns out (G, T, Dv) under the local-sink policy."""
    G, T, _ = q.shape
    acc = torch.zeros(T, dtype=torch.float64)
    local: list[int] = []
    considered = S  # keys at positions < considered have competed already (or are sinks)
    out = torch.zeros(G, T, v.shape[-1])
    for n in range(0, T, chunk):
        # before the call: keys that left the window compete (ties are improbable with random weights)
        while considered <= n - W:
            local.append(considered)
            considered += 1
        alive = [p for p in local if sliding is None or n - p < sliding]
        local = sorted(alive, key=lambda p: -acc[p])[:M]
        for t in range(n, min(n + chunk, T)):
            vis = sorted(
                set(range(min(S, t + 1)))
                | {p for p in local if sliding is None or t - p < sliding}
                | set(range(max(0, t - W + 1), t + 1))
            )
            idx = torch.tensor(vis)
            p = torch.softmax((q[:, t] @ k[idx].T) * scaling, dim=-1)  # (G, len(vis))
            out[:, t] = p @ v[idx]
            inwin = [j for j, key in enumerate(vis) if key > t - W and key >= S]
            for j in inwin:
                acc[vis[j]] += float(p[:, j].sum())
    return out


def reference(retrieval, S, M, W, chunk, sliding=None):
    def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        B, Hq, T, D = query.shape
        Hkv = key.shape[1]
        G = Hq // Hkv
        out = torch.zeros(B, Hq, T, value.shape[-1])
        for b in range(B):
            for g in range(Hkv):
                qg = query[b, g * G : (g + 1) * G]
                if g in retrieval:
                    t, kk = torch.arange(T)[:, None], torch.arange(T)[None]
                    vis = (kk <= t) & ((t - kk < sliding) if sliding else True)
                    s = (qg @ key[b, g].T) * scaling
                    out[b, g * G : (g + 1) * G] = torch.softmax(s.masked_fill(~vis, float("-inf")), -1) @ value[b, g]
                else:
                    sim = simulate(qg, key[b, g], value[b, g], scaling, S, M, W, chunk, sliding)
                    out[b, g * G : (g + 1) * G] = sim
        return out.transpose(1, 2).contiguous(), None

    return attention


@torch.inference_mode()
def run(model, cache, ids, chunk):
    with head_aware_attention(model):
        return torch.cat(
            [model(ids[:, s : s + chunk], cache=cache, use_cache=True).logits for s in range(0, ids.shape[1], chunk)],
            dim=1,
        )


def ref_logits(model, ids, name, attention):
    from transformers import AttentionInterface

    AttentionInterface.register(name, attention)
    model.set_attn_implementation(name)
    try:
        with torch.inference_mode():
            return model(ids).logits
    finally:
        model.set_attn_implementation("sdpa")


@pytest.mark.parametrize("chunk", [1, 4, 9])
@pytest.mark.parametrize("retrieval", [[], [1]], ids=["all-streaming", "mixed"])
def test_global_layer_matches_the_policy_simulation(chunk, retrieval):
    model = tiny_llama(num_hidden_layers=1, num_key_value_heads=2, **BIG)
    ids = torch.randint(1, 99, (2, 31), generator=torch.Generator().manual_seed(2))
    S, M, W = 2, 3, 5
    for b in range(2):  # batch rows keep their own local sinks
        want = ref_logits(model, ids[b : b + 1], "test_local_ref", reference(retrieval, S, M, W, chunk))
        cache = HeadAwareSinkCache([retrieval], S, W, model=model, local_sinks=M)
        torch.testing.assert_close(run(model, cache, ids[b : b + 1], chunk), want, atol=1e-4, rtol=1e-4)
    both = run(model, HeadAwareSinkCache([retrieval], S, W, model=model, local_sinks=M), ids, 1)
    one = run(model, HeadAwareSinkCache([retrieval], S, W, model=model, local_sinks=M), ids[1:], 1)
    torch.testing.assert_close(both[1], one[0], atol=1e-4, rtol=1e-4)  # each batch row keeps its own local sinks


@pytest.mark.parametrize("chunk", [1, 5])
def test_sliding_layer_drops_local_sinks_past_its_own_window(chunk):
    model = tiny_gemma3(num_hidden_layers=1, layer_types=["sliding_attention"], sliding_window=10, **BIG)
    ids = torch.randint(1, 99, (1, 40), generator=torch.Generator().manual_seed(3))
    want = ref_logits(model, ids, "test_local_ref_sw", reference([], 0, 2, 3, chunk, sliding=10))
    cache = HeadAwareSinkCache([[]], 4, 3, model=model, local_sinks=2)
    assert isinstance(cache.layers[0].stream, LocalSinkRing) and cache.layers[0].stream.S == 0
    torch.testing.assert_close(run(model, cache, ids, chunk), want, atol=1e-4, rtol=1e-4)
    pos = cache.layers[0].stream.pos[0, 0, :2]
    assert bool(((pos < 0) | (39 - pos < 10)).all())  # what is held is still inside the model's window


def test_the_most_attended_key_keeps_its_slot():
    ring = LocalSinkRing(n_sink=1, local=1, window=3)
    k = torch.arange(12.0).view(1, 1, 12, 1)
    for n in range(12):
        keys, values, mask, observe = ring.update(k[:, :, n : n + 1], k[:, :, n : n + 1], n)
        colsum = torch.zeros(1, 1, keys.shape[2])
        held = ring.pos[0, 0]
        colsum[0, 0, held == 4] = 0.9  # position 4 draws attention while in the window
        colsum[0, 0, (held >= 1) & (held != 4)] = 0.01
        observe(colsum)
    assert ring.pos[0, 0].tolist()[:2] == [0, 4]  # sink 0, local sink 4
    assert sorted(ring.pos[0, 0, 2:].tolist()) == [9, 10, 11]
    assert float(ring.v[0, 0, 1, 0]) == 4.0


def test_budget_counts_local_sinks_and_generate_works():
    stream, full = slot_costs(["global", "sliding"], [None, 8], 4, 3, 100, local_sinks=2)
    assert stream == [9, 5] and full == [100, 8]
    assert slot_costs(["sliding"], [8], 4, 6, 100, local_sinks=2)[0] == [6]  # 6 + 2 reaches the own window
    model = tiny_llama(**BIG)
    prompt = torch.randint(1, 99, (1, 5), generator=torch.Generator().manual_seed(4))
    kw = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)
    with head_aware_attention(model):
        out = model.generate(prompt, cache=HeadAwareSinkCache([[0], []], 1, 4, model=model, local_sinks=2), **kw)
        beams = model.generate(
            prompt, cache=HeadAwareSinkCache([[0], []], 1, 4, model=model, local_sinks=2), num_beams=2, **kw
        )
    assert out.shape == beams.shape == (1, 21)


def test_kv_bytes_include_the_bookkeeping():
    model = tiny_llama(**BIG)
    cache = HeadAwareSinkCache([[], []], 2, 4, model=model, local_sinks=3)
    run(model, cache, torch.randint(1, 99, (1, 20)), 1)
    ring = cache.layers[0].stream
    D = ring.k.shape[-1]
    assert ring.k.shape[2] == 2 + 3 + 4
    assert cache.layers[0].kv_bytes() == 2 * 9 * (2 * D * 4 + 4 + 8)  # 2 heads x 9 slots: k, v, acc, pos


def test_rank_both_needs_far_attention_on_the_target():
    stream = {
        "scores": [[0.5, 0.5, 0.5]],
        "copy_scores": [[0.2, 0.3, 0.9]],  # head 0 reaches far the most
        "retrieval_scores": [[0.05, 0.6, 0.1]],  # but head 1 lands on the token to copy
    }
    assert min(range(3), key=lambda h: rank_scores(stream, "both")[0][h]) == 1
    assert min(range(3), key=lambda h: rank_scores(stream, "copy")[0][h]) == 0
    assert rank_scores({"scores": [[0.4]]}, "both") == [[0.4]]  # no copy scores: the plain band share
