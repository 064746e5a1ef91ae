"""SinkCache on the bundled real models (SmolLM2: Llama; Gemma-3: sliding and global layers mixed)."""

from __future__ import annotations

import pytest
import torch

from sinkhole.cache.sink_cache import SinkCache, SinkCacheLayer

pytestmark = pytest.mark.integration

TEXT_START = 2000  # characters into the pydoc text, past the first topic's title


def stream_ids(lm, n):
    from sinkhole.cache.stream_ppl import default_text, encode_stream

    text, _ = default_text()
    return encode_stream(lm.tokenizer, text[TEXT_START:], n)


@torch.inference_mode()
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_before_eviction_equals_full_forward(name, request):
    lm = request.getfixturevalue(name)
    ids = stream_ids(lm, 40)
    full = lm.model(ids).logits[0]
    cache = SinkCache(4, 60, model=lm.model)
    steps = torch.stack([lm.model(ids[:, t : t + 1], cache=cache, use_cache=True).logits[0, -1] for t in range(40)])
    assert (steps - full).abs().max().item() < 2e-3


@torch.inference_mode()
def test_gemma3_global_layers_pin_sinks_and_local_layers_slide(gemma3):
    cache = SinkCache(4, 28, model=gemma3.model)
    kinds = gemma3.model.config.layer_types
    ids = stream_ids(gemma3, 48)
    gemma3.model(ids[:, :16], cache=cache, use_cache=True)
    for t in range(16, 48):
        gemma3.model(ids[:, t : t + 1], cache=cache, use_cache=True)
    for kind, layer in zip(kinds, cache.layers):
        if kind == "full_attention":
            assert isinstance(layer, SinkCacheLayer) and layer.sink_pos == [0, 1, 2, 3]
            assert layer.stored_length() == 4 + 28 - 1
        else:  # native window 512 > the cache's 32 slots: a plain window of 32
            assert layer.keys.shape[-2] == 32 - 1


def test_smollm2_streaming_shape(smollm2):
    """The literature's shape at a small scale: once the first tokens leave a 64-slot cache,
    window-only perplexity rises above sinks + window. Printed numbers go to docs/cache.md."""
    from sinkhole.cache.stream_ppl import evaluate_stream
    from sinkhole.render.stream_text import render_table

    ids = stream_ids(smollm2, 224)
    res = evaluate_stream(smollm2, ids, cache_size=64, n_sink=4, profile_positions=None, recompute_samples=12)
    d = res.to_dict()
    print(render_table(res))
    rows = {r["method"]: r for r in d["summary"]}
    assert rows["sinks"]["ppl_past_cache"] < rows["window"]["ppl_past_cache"]
    # Before eviction, sinks + window is dense attention.
    head = slice(0, 62)
    assert torch.allclose(
        torch.tensor(d["methods"]["sinks"]["nll"][head]), torch.tensor(d["methods"]["dense"]["nll"][head]), atol=1e-3
    )


def test_generate_long_with_small_cache(smollm2):
    """Greedy generation far past the cache keeps the cache bounded and generates every token."""
    tok = smollm2.tokenizer
    ids = tok("The history of the Python programming language", return_tensors="pt").input_ids
    cache = SinkCache(4, 28, model=smollm2.model)
    out = smollm2.model.generate(ids, cache=cache, max_new_tokens=60, min_new_tokens=60, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 60
    assert max(layer.stored_length() for layer in cache.layers) == 4 + 28 - 1
    assert cache.get_seq_length() == out.shape[1] - 1


def test_cli_stream_writes_table_json_and_plot(tmp_path, capsys):
    import json

    from sinkhole.cli.main import main

    rc = main(
        [
            "stream",
            "--tokens",
            "48",
            "--cache",
            "16",
            "--sinks",
            "2",
            "--samples",
            "4",
            "--json",
            str(tmp_path / "s.json"),
            "--plot",
            str(tmp_path / "s.png"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "sinks + window" in out and "recomputed" in out
    d = json.loads((tmp_path / "s.json").read_text())
    assert d["schema"] == "sinkhole.stream/1" and len(d["methods"]["sinks"]["nll"]) == 47
    from sinkhole.cache.sink_cache import profile_positions
    from sinkhole.profiles.profile import load_profile

    assert d["methods"]["profile"]["sink_positions"] == profile_positions(load_profile("smollm2-135m"))
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
