"""kv-bench: task generators, the SnapKV-style cache against a brute-force selection, byte budgets."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from sinkhole.errors import SinkholeError
from sinkhole.kvbench.tasks import PPL_TOKENS, SEED_BASE, TASKS, Encoder, grid_depths, make_samples, occurrences


class CharTokenizer:
    """One id per character (ids 3..98, so a tiny model's 99-token vocabulary holds them), BOS = 1."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [3 + ord(c) % 96 for c in text]}


@pytest.fixture(scope="module")
def enc():
    return Encoder(CharTokenizer())


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [700, 1031])
def test_answer_once_where_stated(enc, task, length):
    samples = make_samples(enc, task, length, depths=3, seeds=2)
    assert len(samples) == (6 if task == "niah" else 2)
    for s in samples:
        assert len(s.ids) == length and s.ids[0] == 1 and s.seed >= SEED_BASE
        if task == "ppl":
            assert s.where == -1 and len(s.answer) == PPL_TOKENS and s.depth is None
            continue
        assert occurrences(s.ids, s.answer) == [s.where]  # exactly once, at the stated place
        assert 0 <= s.depth <= 1


@pytest.mark.parametrize("task", TASKS)
def test_generators_seeded(enc, task):
    a = make_samples(enc, task, 900, depths=2, seeds=2)
    b = make_samples(enc, task, 900, depths=2, seeds=2)
    assert a == b  # deterministic
    assert a[0].ids != a[-1].ids  # another seed (or depth) is another prompt


def test_niah_depth_moves_the_needle(enc):
    samples = make_samples(enc, "niah", 600, depths=5, seeds=1)
    assert [s.depth for s in samples] == grid_depths(5) == [0, 0.25, 0.5, 0.75, 1.0]
    wheres = [s.where for s in samples]
    assert wheres == sorted(wheres) and wheres[0] < 120 and wheres[-1] > 480


def test_occurrences_finds_every_copy():
    assert occurrences([1, 2, 3, 1, 2, 1, 2], [1, 2]) == [0, 3, 5]
    assert occurrences([1, 2], [2, 3]) == []


def test_unknown_task_and_short_length(enc):
    with pytest.raises(SinkholeError, match="unknown task"):
        make_samples(enc, "nope", 900)
    with pytest.raises(SinkholeError, match="cannot hold"):
        make_samples(enc, "multikey", 120)


# -- the SnapKV-style cache ----------------------------------------------------------------------


def brute_force_keep(model, ids, window, capacity, kernel):
    """Per layer, the (B, H) sets of kept positions from eager attention maps, by explicit loops."""
    from sinkhole.probe.hooks import attention_implementation

    with attention_implementation(model, "eager"), torch.inference_mode():
        maps = model(ids, output_attentions=True, use_cache=False).attentions
    N, prefix = ids.shape[1], ids.shape[1] - window
    H = model.config.num_key_value_heads
    G = model.config.num_attention_heads // H
    out = []
    for a in maps:  # (B, Hq, N, N)
        per = []
        for b in range(a.shape[0]):
            row = []
            for h in range(H):
                score = [float(a[b, h * G : (h + 1) * G, N - window :, k].sum(-1).mean()) for k in range(prefix)]
                pooled = []
                for i in range(prefix):
                    near = [score[j] for j in range(i - kernel // 2, i + kernel // 2 + 1) if 0 <= j < prefix]
                    pooled.append(sum(near) / kernel)
                best = sorted(range(prefix), key=lambda i: (-pooled[i], i))[: capacity - window]
                row.append(sorted(best) + list(range(prefix, N)))
            per.append(row)
        out.append(per)
    return out


@pytest.mark.parametrize("kernel", [1, 3])
def test_snapkv_keeps_what_brute_force_picks(kernel):
    from sinkhole.kvbench.snapkv import SnapKVCache, SnapKVLayer, snapkv_attention

    model = tiny_llama(seed=3)
    torch.manual_seed(0)
    ids = torch.randint(3, 99, (2, 48))
    window, capacity = 6, 20
    cache = SnapKVCache(model=model, capacity=capacity, prompt_length=48, window=window, kernel=kernel, max_new=4)
    with snapkv_attention(model), torch.inference_mode():
        model(ids[:, :30], cache=cache, use_cache=True)
        model(ids[:, 30:], cache=cache, use_cache=True)
    expected = brute_force_keep(model, ids, window, capacity, kernel)
    layers = [layer for layer in cache.layers if isinstance(layer, SnapKVLayer)]
    assert len(layers) == 2
    for layer, want in zip(layers, expected):
        assert layer.kept_positions().tolist() == want
    # the buffer: capacity + max_new slots per head, nothing else
    per_slot = 2 * ids.shape[0] * model.config.num_key_value_heads * (32 // 4) * 4
    assert cache.kv_bytes() == 2 * (capacity + 4) * per_slot


def test_snapkv_decode_matches_masked_attention():
    """One layer: after compression, decoding equals full attention with each head masked to its kept keys."""
    from sinkhole.kvbench.snapkv import SnapKVCache, snapkv_attention
    from sinkhole.probe.hooks import attention_implementation

    model = tiny_llama(seed=5, num_hidden_layers=1)
    torch.manual_seed(1)
    ids = torch.randint(3, 99, (1, 44))
    P, window, capacity = 40, 4, 14
    cache = SnapKVCache(model=model, capacity=capacity, prompt_length=P, window=window, kernel=3, max_new=4)
    with snapkv_attention(model), torch.inference_mode():
        model(ids[:, : P - window], cache=cache, use_cache=True)
        model(ids[:, P - window : P], cache=cache, use_cache=True)
        got = model(ids[:, P:], cache=cache, use_cache=True).logits  # a 4-token chunk after compression
    kept = cache.layers[0].kept_positions()[0, :, :capacity]  # (H, C)
    T, Hq = ids.shape[1], model.config.num_attention_heads
    G = Hq // kept.shape[0]
    allowed = torch.ones(Hq, T, T, dtype=torch.bool).tril()
    for h in range(Hq):
        row = torch.zeros(T, dtype=torch.bool)
        row[kept[h // G]] = True
        row[P:] = True
        allowed[h, P:] &= row
    mask = torch.zeros(1, Hq, T, T).masked_fill(~allowed, float("-inf"))
    with attention_implementation(model, "eager"), torch.inference_mode():
        want = model(ids, attention_mask=mask, use_cache=False).logits[:, P:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # and it differs from dense attention (the test can fail)
    with torch.inference_mode():
        dense = model(ids, use_cache=False).logits[:, P:]
    assert (dense - got).abs().max() > 1e-3


def test_snapkv_refuses_a_chunk_across_the_prompt_end_and_missing_attention():
    from sinkhole.kvbench.snapkv import SnapKVCache

    model = tiny_llama()
    ids = torch.randint(3, 99, (1, 40))
    cache = SnapKVCache(model=model, capacity=10, prompt_length=30, window=4)
    with pytest.raises(SinkholeError, match="past the prompt's end"), torch.inference_mode():
        model(ids, cache=cache, use_cache=True)
    cache = SnapKVCache(model=model, capacity=10, prompt_length=30, window=4)
    with pytest.raises(SinkholeError, match="snapkv_attention"), torch.inference_mode():
        model(ids[:, :30], cache=cache, use_cache=True)
        model(ids[:, 30:], cache=cache, use_cache=True)
