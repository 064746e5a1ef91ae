"""TransformerLens 4 and nnsight, with the real packages (the `test` extra installs them; skipped
where they are not installed). The reference is always sinkhole's own probe on an untouched copy
of the same HF model: TransformerLens's bridge rewrites the model it is given in place."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import tiny_llama, wrap
from test_cli import tiny_dir  # noqa: F401  (fixture)

from sinkhole.analysis.core import analyze
from sinkhole.mask.compute import token_mask
from sinkhole.probe.probe import ModelProbe

LOW = dict(threshold=1.2, epsilon=0.1, min_sink_rate=0.3)
IDS = [5, 9, 3, 17, 4, 11, 20, 6, 8, 13, 7, 22]


def needs(dist: str, *version: int) -> None:
    """Skip unless the distribution is installed at this version or later (TransformerLens has no __version__)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        have = tuple(int(p) for p in installed(dist).split(".")[: len(version)])
    except (PackageNotFoundError, ValueError):
        pytest.skip(f"{dist} is not installed")
    if have < version:
        pytest.skip(f"{dist} {installed(dist)} is older than {'.'.join(map(str, version))}")


@pytest.fixture
def tokenizer(tiny_dir):  # noqa: F811
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)  # saved to disk: TransformerLens reloads it by name


def test_transformer_lens_cache_gives_the_probes_numbers(tokenizer):
    needs("transformer-lens", 4)
    from transformer_lens.model_bridge import TransformerBridge

    from sinkhole.integrations.transformer_lens import capture_from_cache, mask_from_cache

    hf = tiny_llama(max_position_embeddings=64)
    reference = ModelProbe(wrap(copy.deepcopy(hf)))
    bridge = TransformerBridge.boot_transformers("tiny-llama", hf_model=hf, tokenizer=tokenizer, device="cpu")
    tokens = torch.tensor([IDS])
    _, cache = bridge.run_with_cache(tokens)
    got = analyze(capture_from_cache(bridge, cache, tokens), **LOW)
    want = analyze(reference.run(IDS), **LOW)
    for path in (
        ("spikes", "per_token_score"),
        ("sinks", "per_token_mass"),
        ("sinks", "per_token_sink_rate"),
        ("residual", "norm"),
        ("residual", "attn_out_norm"),
        ("residual", "ffn_out_norm"),
        ("residual", "embed_norm"),
    ):
        a, b = (np.array(getattr(getattr(r, path[0]), path[1]), float) for r in (got, want))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=".".join(path))
    assert [s.position for s in got.spikes.tokens] == [s.position for s in want.spikes.tokens]
    assert [s.position for s in got.sinks.tokens] == [s.position for s in want.sinks.tokens]
    assert got.sinks.tokens and got.spikes.tokens  # both rules were exercised
    assert got.kv.sink_attention_share == pytest.approx(want.kv.sink_attention_share, rel=1e-4)
    assert [s.channels for s in got.spikes.tokens] == [s.channels for s in want.spikes.tokens]

    m = mask_from_cache(cache, tokens, layer=1, **LOW)
    ref = token_mask(reference, IDS, layer=1, candidates=None, **LOW)
    assert (m.spike == ref.spike).all() and (m.sink == ref.sink).all() and m.measured.all()
    np.testing.assert_allclose(m.sink_rate, ref.sink_rate, atol=1e-6)
    np.testing.assert_allclose(m.norm_ratio, ref.norm_ratio, rtol=1e-4)


def test_nnsight_trace_keeps_the_unmasked_tokens(tokenizer):
    needs("nnsight", 0, 8)
    from nnsight import TransformersModel

    from sinkhole.integrations.nnsight import hf_module, keep_positions, kept_activations

    hf = tiny_llama()
    reference = copy.deepcopy(hf)
    lm = TransformersModel(hf, task="text-generation", tokenizer=tokenizer)
    mask = token_mask(hf_module(lm), IDS, **LOW)  # sinkhole on the wrapped module: nnsight replaced nothing
    want = token_mask(reference, IDS, **LOW)
    assert (mask.masked == want.masked).all() and 0 < mask.masked.sum() < len(IDS)
    kept = kept_activations(lm, IDS, layer=0, mask=mask)
    with torch.no_grad():
        h0 = reference(input_ids=torch.tensor([IDS]), output_hidden_states=True).hidden_states[1][0]
    keep = keep_positions(mask)
    assert kept.shape == (len(keep), h0.shape[-1])
    torch.testing.assert_close(kept, h0[keep], rtol=1e-5, atol=1e-6)
    # without a mask, kept_activations makes one at that layer
    auto = kept_activations(lm, IDS, layer=0, **LOW)
    want0 = token_mask(reference, IDS, layer=0, **LOW)
    assert auto.shape[0] == int(want0.keep.sum())
