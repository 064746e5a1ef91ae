"""HeadAwareSinkCache (retrieval heads keep everything, streaming heads sinks + window) and the
band statistic behind the profiles' streaming scores."""

from __future__ import annotations

import pytest
import torch
from conftest import bare_profile, tiny_gemma3, tiny_llama, wrap

from sinkhole.cache.head_aware import HeadAwareSinkCache, head_aware_attention
from sinkhole.cache.head_plan import select_retrieval_heads, slot_costs
from sinkhole.errors import SinkholeError
from sinkhole.experiments.head_scores import measure_streaming_scores
from sinkhole.profiles.stream_scores import band_share, layer_kinds

BIG = dict(initializer_range=0.3)


def ids_of(n, seed=0):
    return torch.randint(1, 99, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def run_chunks(model, cache, ids, chunk):
    with head_aware_attention(model):
        return torch.cat(
            [
                model(ids[:, s : s + chunk], cache=cache, use_cache=True).logits[0]
                for s in range(0, ids.shape[1], chunk)
            ]
        )


def all_heads(model):
    return [list(range(model.config.num_key_value_heads))] * model.config.num_hidden_layers


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
@pytest.mark.parametrize("chunk", [1, 7, 40])
def test_full_budget_equals_dense(make, chunk):
    model = make(**BIG)
    ids = ids_of(40)
    full = model(ids).logits[0]
    out = run_chunks(model, HeadAwareSinkCache(all_heads(model), 2, 6, model=model), ids, chunk)
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_all_streaming_one_layer_equals_forward_on_kept_tokens():
    """One layer, every head streaming: the last token's logits equal a forward over sinks + window
    at their own positions (no re-rotation: positions stay the model's)."""
    model = tiny_llama(num_hidden_layers=1, **BIG)
    ids = ids_of(30)
    cache = HeadAwareSinkCache([[]], 2, 6, model=model)
    with head_aware_attention(model):
        for t in range(30):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True).logits[0, -1]
            kept = sorted(set(range(min(2, t + 1))) | set(range(max(0, t - 5), t + 1)))
            ref = model(ids[:, kept], position_ids=torch.tensor([kept])).logits[0, -1]
            assert (out - ref).abs().max().item() < 1e-4, t


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_chunked_prefill_equals_token_by_token_with_mixed_heads(make):
    model = make(num_key_value_heads=2, **BIG) if make is tiny_gemma3 else make(**BIG)
    retrieval = [[1], [0]]
    ids = ids_of(37, seed=3)
    one = run_chunks(model, HeadAwareSinkCache(retrieval, 2, 5, model=model), ids, 1)
    for chunk in (4, 37):
        torch.testing.assert_close(
            run_chunks(model, HeadAwareSinkCache(retrieval, 2, 5, model=model), ids, chunk), one, atol=1e-4, rtol=1e-4
        )
    dense = model(ids).logits[0]
    assert (one - dense).abs().max().item() > 1e-3  # the streaming heads did forget


@torch.inference_mode()
def test_streaming_heads_hold_exactly_sinks_and_window():
    from transformers import DynamicCache

    model = tiny_llama(**BIG)
    ids = ids_of(23)
    dyn = DynamicCache(config=model.config)
    model(ids, cache=dyn, use_cache=True)
    cache = HeadAwareSinkCache([[0], [1]], 3, 5, model=model)
    run_chunks(model, cache, ids, 1)
    for l, layer in enumerate(cache.layers):
        r, s = layer.retrieval[0], layer.streaming[0]
        held = layer.stream.held_positions(23)
        assert sorted(held) == [0, 1, 2, 18, 19, 20, 21, 22]
        assert layer.used_slots() == 23 + 8
        if l == 0:  # layer 0's keys do not depend on what the cache forgot (later layers' do)
            dk = dyn.layers[0].keys
            torch.testing.assert_close(layer.full.k[:, 0, :23], dk[:, r])
            torch.testing.assert_close(layer.stream.k[:, 0, : len(held)], dk[:, s, held])


def test_kv_bytes_match_tensors():
    model = tiny_llama(**BIG)
    cache = HeadAwareSinkCache([[0], []], 2, 6, model=model)
    run_chunks(model, cache, ids_of(30), 1)
    expected = 0
    for layer in cache.layers:
        for store in (layer.full, layer.stream):
            if store.k is not None:
                expected += store.k.numel() * store.k.element_size() + store.v.numel() * store.v.element_size()
    assert cache.kv_bytes() == expected
    l0 = cache.layers[0]  # 1 retrieval head: a buffer of 256 slots; 1 streaming head: 8 ring slots
    D = l0.full.k.shape[-1]
    assert l0.kv_bytes() == 2 * 4 * D * (256 + 8)


def test_generate_works_and_needs_the_attention_function():
    model = tiny_llama()
    prompt = ids_of(5, seed=4)
    kw = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
    with head_aware_attention(model):
        out = model.generate(prompt, cache=HeadAwareSinkCache(all_heads(model), 2, 6, model=model), **kw)
        small = model.generate(prompt, cache=HeadAwareSinkCache([[0], [1]], 1, 4, model=model), **kw)
    assert torch.equal(out, model.generate(prompt, **kw))
    assert small.shape == (1, 25)
    assert model.config._attn_implementation != "sinkhole_head_aware"  # restored
    with pytest.raises((SinkholeError, RuntimeError)):
        model.generate(prompt, cache=HeadAwareSinkCache([[0], [1]], 1, 4, model=model), **kw)


def test_select_heads_meets_budget_and_prefers_low_scores():
    kinds, windows = ["global", "global"], [None, None]
    scores = [[0.99, 0.2], [0.5, 0.95]]
    costs = slot_costs(kinds, windows, 4, 60, 1000)
    picked = select_retrieval_heads(scores, kinds, costs, budget=0.5, length=1000)
    assert picked == [[1], []]  # one upgrade costs 936 slots; a second would pass 2000
    stream, full = costs
    used = sum(full[l] if h in picked[l] else stream[l] for l in range(2) for h in range(2))
    assert used <= 0.5 * 4 * 1000
    rnd = select_retrieval_heads(scores, kinds, costs, 0.5, 1000, random_heads=1)
    assert sum(map(len, rnd)) == 1
    with pytest.raises(SinkholeError, match="budget"):
        select_retrieval_heads(scores, kinds, slot_costs(kinds, windows, 4, 600, 1000), budget=0.5, length=1000)


def test_from_profile_needs_streaming_scores():
    model = tiny_llama()
    p = bare_profile()
    with pytest.raises(SinkholeError, match="streaming scores"):
        HeadAwareSinkCache.from_profile(p, model=model)
    p.streaming = {"n_sink": 1, "window": 4, "scores": [[0.9, 0.1], [0.8, 0.7]]}
    cache = HeadAwareSinkCache.from_profile(p, model=model, window=4, budget=0.6, length=64, local_sinks=0)
    assert cache.retrieval == [[1], [1]] and cache.n_sink == 1


# --- the band statistic -------------------------------------------------------------------------


def eager_band(q, k, scaling, n_sink, window, sliding=None):
    """The same statistic from full T x T probabilities: (B, Hkv, T - n_sink - window)."""
    B, Hq, T, D = q.shape
    G = Hq // k.shape[1]
    s = torch.einsum("bhtd,bhkd->bhtk", q, k.repeat_interleave(G, dim=1)) * scaling
    t = torch.arange(T)[:, None]
    kk = torch.arange(T)[None, :]
    vis = kk <= t
    if sliding:
        vis &= t - kk < sliding
    p = torch.softmax(s.masked_fill(~vis, float("-inf")), -1)
    band = (kk < n_sink) | (kk > t - window)
    share = (p * band).sum(-1)[:, :, n_sink + window :]  # (B, Hq, eligible)
    return share.reshape(B, -1, G, share.shape[-1]).mean(2)


@pytest.mark.parametrize("sliding", [None, 9])
@pytest.mark.parametrize("block_bytes", [1, 10_000, 2**30])
def test_band_share_matches_eager(sliding, block_bytes):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 6, 50, 8, generator=g) * 2, torch.randn(2, 3, 50, 8, generator=g) * 2
    got = band_share(q, k, 0.35, 3, 7, sliding, block_bytes=block_bytes)
    ref = eager_band(q, k, 0.35, 3, 7, sliding)
    assert got.shape == ref.shape == (2, 3, 40)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert band_share(q, k, 0.35, 3, 60).shape == (2, 3, 0)


def test_band_share_detects_far_attention():
    """A query that copies a far key scores low; one that looks at recent keys scores 1."""
    T, D = 40, 4
    k = torch.zeros(1, 1, T, D)
    k[0, 0, 10] = torch.tensor([10.0, 0, 0, 0])
    q = torch.zeros(1, 1, T, D)
    q[0, 0, :, 0] = 5.0
    far = band_share(q, k, 1.0, 2, 8)[0, 0]  # queries 10..39
    assert far[:8].min() > 0.99 and far[8:].max() < 1e-3  # key 10 in the window for t = 10..17, then gone
    near = band_share(torch.zeros(1, 1, T, D), k, 1.0, 2, 35)[0, 0]  # uniform: t=37 sees 38 keys, 37 in band
    torch.testing.assert_close(near, torch.tensor([37 / 38, 37 / 39, 37 / 40]))


def test_measure_streaming_scores_on_tiny_models():
    from sinkhole.profiles.stream_scores import CopyPrompt

    for model in (tiny_llama(**BIG), tiny_gemma3(**BIG)):
        lm = wrap(model)
        res = measure_streaming_scores(lm, [ids_of(40), ids_of(30, 1)], n_sink=2, window=8)
        assert res["copy_scores"] is None and res["copy_queries"] == 0
        copy = measure_streaming_scores(lm, [CopyPrompt(ids_of(40), [(12, 30, 5)])], n_sink=2, window=8)
        assert copy["copy_queries"] == 4 and len(copy["copy_scores"]) == model.config.num_hidden_layers
        assert all(0 <= v <= 1 for row in copy["retrieval_scores"] for v in row) and res["retrieval_scores"] is None
        kinds, _ = layer_kinds(model)
        assert res["layer_kinds"] == kinds
        assert len(res["scores"]) == model.config.num_hidden_layers
        assert all(0 < s <= 1 + 1e-6 for row in res["scores"] for s in row)
        if kinds[0] == "global":
            assert res["queries"] == 30 + 20
        if "sliding" in kinds:  # window 4 <= 8: the band is everything a sliding head sees
            assert all(abs(s - 1) < 1e-5 for s in res["scores"][kinds.index("sliding")])


def per_head_reference(retrieval, n_sink, window):
    """An eager attention function that applies, per KV head, the mask the cache implies: causal for
    retrieval heads, causal within sinks + the last `window` keys for streaming heads."""

    def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        B, Hq, T, D = query.shape
        G = Hq // key.shape[1]
        t, k = torch.arange(T)[:, None], torch.arange(T)[None, :]
        causal = k <= t
        band = causal & ((k < n_sink) | (k > t - window))
        masks = torch.stack([causal if h // G in retrieval[module.layer_idx] else band for h in range(Hq)])
        s = torch.einsum("bhtd,bhkd->bhtk", query, key.repeat_interleave(G, 1)) * scaling
        p = torch.softmax(s.masked_fill(~masks, float("-inf")), -1)
        return torch.einsum("bhtk,bhkd->bthd", p, value.repeat_interleave(G, 1)), None

    return attention


@pytest.mark.parametrize(
    "retrieval,kv", [([[1], [0]], 2), ([[0, 1], []], 2), ([[], [1]], 2), ([[0, 2], [1, 2, 3]], 4)]
)  # the last: gathered (non-contiguous) heads
def test_mixed_heads_equal_a_full_forward_with_per_head_masks(retrieval, kv):
    """Independent reference: one full forward whose attention masks each head as the cache keeps it."""
    from transformers import AttentionInterface

    model = tiny_llama(num_key_value_heads=kv, **BIG)
    ids = ids_of(33, seed=5)
    AttentionInterface.register("test_per_head", per_head_reference(retrieval, 2, 6))
    model.set_attn_implementation("test_per_head")
    with torch.inference_mode():
        ref = model(ids).logits[0]
    model.set_attn_implementation("sdpa")
    for chunk in (1, 5):
        out = run_chunks(model, HeadAwareSinkCache(retrieval, 2, 6, model=model), ids, chunk)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


class CharTokenizer:
    """Text -> one id per character (1..98): enough for copy prompts on the tiny models."""

    def __call__(self, text, add_special_tokens=True, **kw):
        return {"input_ids": [1 + ord(c) % 97 for c in text]}


def tiny_recall_setup():
    """A tiny Llama with a character tokenizer and a profile with streaming scores."""
    lm = wrap(tiny_llama(**BIG))
    lm.tokenizer = CharTokenizer()
    return lm, bare_profile({"n_sink": 2, "window": 8, "scores": [[0.9, 0.1], [0.8, 0.7]]})


def test_recall_evaluation_on_a_tiny_model():
    from sinkhole.cache.recall import evaluate_recall
    from sinkhole.render.recall_text import render_recall

    lm, p = tiny_recall_setup()
    res = evaluate_recall(lm, p, n_tokens=240, budget=0.5, window=8, span=8, n_spans=2, seeds=(0, 1), chunk=16)
    rows = {r.method: r for r in res.rows}
    assert list(rows) == ["dense", "window", "sinks", "head_aware", "random"]
    assert rows["dense"].kv_share == 1.0
    assert all(r.kv_share <= 0.5 for name, r in rows.items() if name != "dense")
    assert rows["head_aware"].detail.retrieval_heads >= 1
    assert rows["random"].detail.retrieval_heads == rows["head_aware"].detail.retrieval_heads
    assert all(r.bytes_share <= 0.5 for name, r in rows.items() if name != "dense")  # the budget is in bytes
    assert rows["head_aware"].kv_bytes == rows["head_aware"].detail.plan["kv_bytes"]
    seeds = rows["random"].detail.seeds  # the control: 3 draws by default, each one's numbers kept
    assert [s.seed for s in seeds] == [0, 1, 2] and len({str(s.retrieval) for s in seeds}) > 1
    assert rows["random"].recall == round(sum(s.recall for s in seeds) / 3, 4)
    assert rows["random"].detail.recall_range == [min(s.recall for s in seeds), max(s.recall for s in seeds)]
    assert res.settings.text.startswith("pydoc_data.topics, second half")  # calibration reads the first
    full = evaluate_recall(lm, p, n_tokens=240, budget=1.0, window=8, span=8, n_spans=2, seeds=(0,), chunk=16)
    by = {r.method: r for r in full.rows}
    assert (
        by["head_aware"].recall == by["dense"].recall and abs(by["head_aware"].ppl_text - by["dense"].ppl_text) < 1e-3
    )
    text = render_recall(res)
    assert "head-aware (profile)" in text and "head-aware (random heads): 3 seeds (0, 1, 2): recall mean" in text


def test_recall_refuses_a_plan_that_cannot_fit_before_any_forward():
    from sinkhole.cache.recall import evaluate_recall

    lm, p = tiny_recall_setup()
    runs = []
    with pytest.raises(SinkholeError, match="budget"):
        evaluate_recall(lm, p, n_tokens=240, window=150, span=8, n_spans=2, seeds=(0,), chunk=16, progress=runs.append)
    assert runs == []


def test_cli_recall_rejects_plot_and_text_before_loading(capsys):
    from sinkhole.cli.main import main

    assert main(["stream", "--recall", "--plot", "x.png"]) == 2
    assert "--recall" in capsys.readouterr().err
    assert main(["profile", "--stream-window", "0", "--json", "x.json"]) == 2


def test_band_share_target_mass_matches_eager():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 4, 30, 8, generator=g) * 2, torch.randn(1, 2, 30, 8, generator=g) * 2
    targets = torch.full((30,), -1)
    targets[20:25] = torch.tensor([3, 4, 5, 6, 7])
    share, hit = band_share(q, k, 0.35, 2, 6, targets=targets, block_bytes=1000)
    torch.testing.assert_close(share, eager_band(q, k, 0.35, 2, 6))
    s = torch.einsum("bhtd,bhkd->bhtk", q, k.repeat_interleave(2, 1)) * 0.35
    p = torch.softmax(s.masked_fill(torch.ones(30, 30).triu(1).bool(), float("-inf")), -1)
    ref = torch.zeros(1, 4, 30)
    ref[0, :, 20:25] = p[0, :, torch.arange(20, 25), torch.tensor([3, 4, 5, 6, 7])]
    torch.testing.assert_close(hit, ref.reshape(1, 2, 2, 30).mean(2)[:, :, 8:])


def test_streaming_scores_are_calibrated_on_text_the_evaluations_never_read(monkeypatch):
    """Profiles' streaming scores: copy prompts from the first half of the pydoc topics, seeds 0..count-1,
    recorded in the section; `stream --recall` (above) and kv-bench read the second half."""
    import sinkhole.experiments.head_scores as st
    from sinkhole.text import pydoc_text

    lm, _ = tiny_recall_setup()
    texts = []
    real = st.copy_prompt
    monkeypatch.setattr(st, "copy_prompt", lambda *a, text, **kw: texts.append(text) or real(*a, text=text, **kw))
    section = st.streaming_section(lm, n_sink=2, window=64, count=2, n_tokens=600)
    from pydoc_data.topics import topics

    calib, keys = pydoc_text(half=0), sorted(topics)
    assert texts and all(t == calib for t in texts)
    assert calib == "\n\n".join(topics[k] for k in keys[: len(keys) // 2])  # no topic of the second half
    assert section["prompts"]["text"].startswith("pydoc_data.topics, first half")
    assert section["prompts"]["seeds"] == [0, 1]
