"""SinkCache (sinkhole.cache.sink_cache) on tiny random models.

The exact reference is full recomputation: with ONE attention layer, a token's keys and values
depend only on the token and its position, so streaming through a sink cache must give the same
next-token logits as running the model from scratch on [pinned tokens + window] at positions
0..n-1 (StreamingLLM's numbering). Deeper models are checked where the answer is still exact:
before any eviction (= DynamicCache / one full forward) and through generate()."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_gemma3, tiny_llama, wrap

from sinkhole.cache.sink_cache import SinkCache, SinkCacheLayer, profile_positions, rotate_keys
from sinkhole.errors import SinkholeError
from sinkhole.models.families import rotary_inv_freq
from sinkhole.profiles.profile import SinkProfile

# Larger init than the default 0.02 so that logits differ visibly when positions are wrong.
BIG = dict(initializer_range=0.3)


def one_layer_llama():
    return tiny_llama(num_hidden_layers=1, **BIG)


def one_layer_gemma_global():
    # A global base far from the local one: re-rotating with the wrong base shows up.
    return tiny_gemma3(
        num_hidden_layers=1,
        layer_types=["full_attention"],
        **BIG,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 100.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    )


def kept_positions(t: int, pinned: list[int], window: int) -> list[int]:
    """Positions a StreamingLLM cache attends to when the query is token t."""
    recent = list(range(max(0, t + 1 - window), t + 1))
    return sorted(set([p for p in pinned if p <= t] + recent))


@torch.inference_mode()
def stream_vs_recompute(model, pinned: list[int], window: int, n: int = 40, seed: int = 0) -> float:
    ids = torch.randint(1, 99, (1, n), generator=torch.Generator().manual_seed(seed))
    cache = SinkCache(window=window, model=model, sink_positions=pinned)
    worst = 0.0
    for t in range(n):
        out = model(ids[:, t : t + 1], cache=cache, use_cache=True).logits[0, -1]
        ref = model(ids[:, kept_positions(t, pinned, window)]).logits[0, -1]
        worst = max(worst, (out - ref).abs().max().item())
    return worst


@pytest.mark.parametrize("make", [one_layer_llama, one_layer_gemma_global], ids=["llama", "gemma3-global"])
@pytest.mark.parametrize("pinned,window", [([0, 1], 6), ([0, 3], 5), ([], 6)], ids=["first2", "gap", "window-only"])
def test_streaming_matches_full_recomputation(make, pinned, window):
    worst = stream_vs_recompute(make(), pinned, window)
    assert worst < 1e-4, f"max |logit diff| vs recomputation {worst:.2e}"


def test_reference_detects_wrong_positions(monkeypatch):
    """The comparison above is sensitive: without re-rotating the sinks it fails by orders of magnitude."""
    import sinkhole.cache.sink_cache as sc

    monkeypatch.setattr(sc, "apply_rotation", lambda keys, cos, sin: keys)
    assert stream_vs_recompute(one_layer_llama(), [0, 1], 6) > 1e-2


def test_rotate_keys_matches_model_rope():
    """R(p) k moved by s equals the model's own RoPE at p + s; shifts compose."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = tiny_llama()
    rope = model.model.rotary_emb
    k = torch.randn(2, 3, 5, 8)  # (B, H, n, D) pre-RoPE
    pos = torch.tensor([[0, 1, 2, 7, 30]])
    shift = torch.tensor([3, 0, 11, -5, 400])
    x = torch.zeros(1, 1, 8)
    cos, sin = rope(x, pos)
    cos2, sin2 = rope(x, pos + shift)
    _, at_p = apply_rotary_pos_emb(k, k, cos, sin)
    _, at_ps = apply_rotary_pos_emb(k, k, cos2, sin2)
    inv = rotary_inv_freq(model, "full_attention")
    torch.testing.assert_close(rotate_keys(at_p, shift, inv), at_ps, atol=1e-5, rtol=1e-5)
    twice = rotate_keys(rotate_keys(at_p, shift, inv), -shift, inv)
    torch.testing.assert_close(twice, at_p, atol=1e-5, rtol=1e-5)


def test_partial_rotary_leaves_the_rest():
    k = torch.randn(1, 1, 4, 8)
    out = rotate_keys(k, torch.tensor([1, 2, 3, 4]), torch.tensor([1.0, 0.1]))  # rotates the first 4 dims
    assert torch.equal(out[..., 4:], k[..., 4:])
    assert not torch.allclose(out[..., :4], k[..., :4])


def test_gemma3_layers_get_their_own_base():
    model = tiny_gemma3()  # layer 0 sliding (window 4), layer 1 global
    rope = model.model.rotary_emb
    assert torch.equal(rotary_inv_freq(model, "full_attention"), rope.full_attention_inv_freq)
    assert torch.equal(rotary_inv_freq(model, "sliding_attention"), rope.sliding_attention_inv_freq)
    cache = SinkCache(2, 6, model=model)
    assert type(cache.layers[0]).__name__ == "DynamicSlidingWindowLayer"
    assert isinstance(cache.layers[1], SinkCacheLayer)
    assert torch.equal(cache.layers[1].inv_freq, rope.full_attention_inv_freq)


@torch.inference_mode()
def test_sliding_layer_keeps_native_local_attention():
    """A sliding layer keeps a plain window, so streaming equals the model's own full forward."""
    model = tiny_gemma3(num_hidden_layers=1, layer_types=["sliding_attention"], **BIG)
    ids = torch.randint(1, 99, (1, 30), generator=torch.Generator().manual_seed(1))
    full = model(ids).logits[0]
    cache = SinkCache(2, 8, model=model)
    steps = torch.stack([model(ids[:, t : t + 1], cache=cache, use_cache=True).logits[0, -1] for t in range(30)])
    torch.testing.assert_close(steps, full, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_before_eviction_equals_full_forward(tiny_model):
    ids = torch.randint(1, 99, (1, 14), generator=torch.Generator().manual_seed(2))
    full = tiny_model(ids).logits[0]
    cache = SinkCache(2, 32, model=tiny_model)
    prefill = tiny_model(ids[:, :5], cache=cache, use_cache=True).logits[0]
    steps = [tiny_model(ids[:, t : t + 1], cache=cache, use_cache=True).logits[0, -1] for t in range(5, 14)]
    torch.testing.assert_close(torch.cat([prefill, torch.stack(steps)]), full, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_memory_stays_bounded(tiny_model):
    cache = SinkCache(3, 8, model=tiny_model)
    ids = torch.randint(1, 99, (1, 60), generator=torch.Generator().manual_seed(3))
    tiny_model(ids[:, :20], cache=cache, use_cache=True)  # a prompt longer than the cache
    for t in range(20, 60):
        tiny_model(ids[:, t : t + 1], cache=cache, use_cache=True)
        for layer in cache.layers:
            if isinstance(layer, SinkCacheLayer):
                assert layer.stored_length() == 3 + 8 - 1
                assert layer.sink_pos == [0, 1, 2]
                assert layer.window_start == t + 1 - 7
            else:
                assert layer.keys.shape[-2] <= 3  # the tiny Gemma's window of 4
    assert cache.get_seq_length() == 60


def test_generate_greedy_batch_equals_single_rows():
    model = tiny_llama()
    prompts = torch.randint(1, 99, (2, 5), generator=torch.Generator().manual_seed(4))
    batch = model.generate(
        prompts,
        cache=SinkCache(2, 6, model=model),
        max_new_tokens=25,
        min_new_tokens=25,
        do_sample=False,
        pad_token_id=0,
    )
    assert batch.shape == (2, 30)
    for row in range(2):
        one = model.generate(
            prompts[row : row + 1],
            cache=SinkCache(2, 6, model=model),
            max_new_tokens=25,
            min_new_tokens=25,
            do_sample=False,
            pad_token_id=0,
        )
        assert torch.equal(one[0], batch[row])


def test_beam_search_before_eviction_equals_dynamic_cache():
    model = tiny_llama()
    prompt = torch.randint(1, 99, (1, 5), generator=torch.Generator().manual_seed(4))
    kw = dict(num_beams=3, max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
    assert torch.equal(
        model.generate(prompt, cache=SinkCache(2, 100, model=model), **kw), model.generate(prompt, **kw)
    )
    cache = SinkCache(2, 6, model=model)
    assert model.generate(prompt, cache=cache, **kw).shape == (1, 25)
    assert cache.layers[0].stored_length() == 2 + 6 - 1


def test_generate_sampled_past_the_trained_context_stays_bounded():
    model = tiny_gemma3(max_position_embeddings=16)  # 33 tokens generated: twice the "context"
    cache = SinkCache(1, 5, model=model)
    torch.manual_seed(0)
    out = model.generate(
        torch.tensor([[3, 4, 5]]),
        cache=cache,
        max_new_tokens=30,
        min_new_tokens=30,
        do_sample=True,
        top_k=10,
        pad_token_id=0,
    )
    assert out.shape == (1, 33)
    assert cache.layers[1].stored_length() == 1 + 5 - 1


def make_profile(positions, slots):
    return SinkProfile(
        model={"name": "t"},
        sink_rule={"positions": positions},
        sink_tokens=[],
        spike_channels=[],
        step_up_layers=[],
        step_down_layers=[],
        sink_heads=[],
        pinned_slots=slots,
        prompts={},
    )


@pytest.mark.parametrize(
    "positions,slots,expected",
    [
        ([0], 1, [0]),
        ([0, 2], 2, [0, 2]),
        ([5], 3, [0, 1, 5]),
        ([2, 0], 1, [0]),
        ([0], 0, []),
    ],
)
def test_profile_positions(positions, slots, expected):
    assert profile_positions(make_profile(positions, slots)) == expected


def test_from_profile_pins_profile_positions():
    model = tiny_llama()
    cache = SinkCache.from_profile(make_profile([0, 3], 2), window=6, model=model)
    assert cache.pinned == (0, 3) and cache.n_sink == 2
    with torch.inference_mode():
        for t in range(20):
            model(torch.tensor([[t + 1]]), cache=cache, use_cache=True)
    assert cache.layers[0].sink_pos == [0, 3]


@pytest.mark.parametrize(
    "kw", [dict(n_sink=2, window=1), dict(n_sink=-1, window=8), dict(window=8, sink_positions=[-1])]
)
def test_bad_arguments(kw):
    with pytest.raises(SinkholeError):
        SinkCache(model=tiny_llama(), **kw)


def test_crop_is_refused():
    with pytest.raises(SinkholeError):
        SinkCache(2, 6, model=tiny_llama()).layers[0].crop(-1)


# --- the streaming evaluator ------------------------------------------------------------------


def test_evaluate_stream_on_tiny_model(tmp_path):
    from sinkhole.cache.stream_ppl import evaluate_stream
    from sinkhole.render.stream_figures import plot_stream
    from sinkhole.render.stream_text import render_table

    lm = wrap(tiny_llama(num_hidden_layers=1, **BIG))
    ids = torch.randint(1, 99, (1, 40), generator=torch.Generator().manual_seed(5))
    res = evaluate_stream(lm, ids, cache_size=8, n_sink=2, profile_positions=[0], recompute_samples=10)
    d = res.to_dict()
    json.dumps(d, allow_nan=False)
    m = d["methods"]
    assert set(m) == {"dense", "window", "sinks", "profile", "recompute"}
    # Before the cache fills, every streaming method is dense attention.
    for name in ("window", "sinks", "profile"):
        torch.testing.assert_close(
            torch.tensor(m[name]["nll"][:7]), torch.tensor(m["dense"]["nll"][:7]), atol=1e-4, rtol=0
        )
    # One layer: window-only streaming and recomputation over the same window are the same computation.
    for j in res.sample_positions:
        assert m["window"]["nll"][j - 1] == pytest.approx(m["recompute"]["nll"][j - 1], abs=1e-4)
    assert len(res.sample_positions) == 10 and min(res.sample_positions) > 8
    assert {r["method"] for r in d["summary"]} == set(m)
    table = render_table(res)
    assert "sinks + window" in table and "recomputed" in table
    # the reference, scored at the 10 samples alone, has a number in the @sample column only, and the
    # table says that column is where every method is scored at the same positions
    rec = next(line for line in table.splitlines() if line.startswith("sliding window, recomputed"))
    assert rec.split()[-2:] == ["10", f"{d['summary'][-1]['ppl_sample']:.2f}"]
    assert "every method at the same 10 sample positions" in table
    plot_stream(res, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_stream_progress_counts_whole_steps():
    from sinkhole.cache.stream_ppl import evaluate_stream, progress_total

    lm = wrap(tiny_llama(num_hidden_layers=1, **BIG))
    ids = torch.randint(1, 99, (1, 40), generator=torch.Generator().manual_seed(5))
    steps = []
    evaluate_stream(
        lm, ids, cache_size=8, n_sink=2, profile_positions=[0, 1, 5], recompute_samples=10, progress=steps.append
    )
    assert all(isinstance(k, int) and k > 0 for k in steps)  # "1205/1205 step", never "1205.0/1205.0"
    assert sum(steps) == progress_total(40, 8, 3, 10, 40)  # the bar ends at its total


def test_evaluate_stream_rejects_too_many_sinks():
    from sinkhole.cache.stream_ppl import evaluate_stream

    with pytest.raises(SinkholeError):
        evaluate_stream(wrap(tiny_llama()), torch.ones(1, 10, dtype=torch.long), cache_size=8, n_sink=7)


def test_cli_rejects_bad_sizes_before_loading(capsys):
    from sinkhole.cli.main import main

    assert main(["stream", "--tokens", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_sink_cache_without_model_is_a_clear_error():
    with pytest.raises(SinkholeError, match="needs the loaded model"):
        SinkCache(4, 252)


@torch.inference_mode()
def test_sink_cache_decode_returns_a_view_of_its_buffer():
    """No per-step allocation of the whole cache: a decode step hands attention its ring buffer."""
    model = tiny_llama()
    cache = SinkCache(2, 6, model=model)
    ids = torch.randint(1, 99, (1, 20), generator=torch.Generator().manual_seed(6))
    model(ids[:, :10], cache=cache, use_cache=True)
    layer = cache.layers[0]
    k, v = layer.update(torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8))
    assert k.untyped_storage().data_ptr() == layer.buf_k.untyped_storage().data_ptr()
    assert k.shape[-2] == 2 + 6
