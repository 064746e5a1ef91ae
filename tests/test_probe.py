"""The probe against brute force: eager attention maps and raw hidden states computed the slow way."""

import numpy as np
import pytest
import torch
from conftest import tiny_gemma3, tiny_llama, wrap

from sinkhole.probe.probe import ModelProbe
from sinkhole.probe.recorder import Recorder, recording

IDS = [5, 17, 3, 42, 8, 8, 91, 23, 11, 60, 2]  # 11 tokens: longer than tiny_gemma3's window of 4


def brute_force(model, ids):
    """Eager attention probabilities and residual states (h_in, h_mid, h_out per layer) via plain hooks."""
    lm = wrap(model)
    fam = lm.family
    states = {}
    handles = []
    for l, layer in enumerate(fam.decoder_layers(model)):
        handles.append(
            layer.register_forward_pre_hook(
                lambda m, a, kw, l=l: states.__setitem__(("in", l), (a[0] if a else kw["hidden_states"]).clone()),
                with_kwargs=True,
            )
        )
        handles.append(
            fam.part(layer, fam.ffn_norm).register_forward_pre_hook(
                lambda m, a, l=l: states.__setitem__(("mid", l), a[0].clone())
            )
        )
        handles.append(
            layer.register_forward_hook(
                lambda m, a, o, l=l: states.__setitem__(("out", l), (o[0] if isinstance(o, tuple) else o).clone())
            )
        )
    prev = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_attentions=True)
    finally:
        model.set_attn_implementation(prev)
        for h in handles:
            h.remove()
    L = len(fam.decoder_layers(model))
    A = torch.stack([a[0] for a in out.attentions])  # (L, H, T, T)
    get = lambda kind: torch.stack([states[(kind, l)][0] for l in range(L)])  # (L, T, D)
    return A, get("in"), get("mid"), get("out"), out.logits


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_capture_equals_brute_force(make):
    model = make()
    A, h_in, h_mid, h_out, _ = brute_force(model, IDS)
    T = len(IDS)
    cap = ModelProbe(wrap(model), maps_max_len=64, top_k=4).run(IDS)
    alpha = A.sum(-2) / torch.arange(T, 0, -1)  # mean over queries t >= k
    np.testing.assert_allclose(cap.attn_mass, alpha.numpy(), atol=1e-5)
    np.testing.assert_allclose(cap.attn_maps.astype(np.float32), A.numpy(), atol=2e-3)
    np.testing.assert_allclose(cap.resid_norm, h_out.norm(dim=-1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(cap.attn_out_norm, (h_mid - h_in).norm(dim=-1).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cap.ffn_out_norm, (h_out - h_mid).norm(dim=-1).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cap.embed_norm, h_in[0].norm(dim=-1).numpy(), rtol=1e-5)
    top = h_out.abs().topk(4, dim=-1)
    np.testing.assert_array_equal(cap.resid_top_channels, top.indices.numpy())
    np.testing.assert_allclose(cap.resid_top_values, torch.gather(h_out, -1, top.indices).numpy(), rtol=1e-5)
    assert cap.attn_mass.shape == (2, 4, T) and cap.tokens[0] == "<5>"


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_logits_unchanged_by_recording(make):
    model = make()
    ids = torch.tensor([IDS])
    with torch.no_grad():
        ref = model(ids).logits
        lm = wrap(model)
        rec = Recorder(2, torch.ones(1, len(IDS), dtype=torch.bool), block_bytes=64)  # many small blocks
        with recording(model, lm.family, rec):
            got = model(ids).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert rec.attn_calls == 2 and model.config._attn_implementation != "sinkhole"  # restored


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_batched_equals_unbatched(make):
    probe = ModelProbe(wrap(make()), maps_max_len=64)
    prompts = [IDS, IDS[:4], IDS[3:9]]
    batched = probe.run_batch(prompts)
    for prompt, got in zip(prompts, batched):
        alone = probe.run(prompt)
        for name in (
            "resid_norm",
            "attn_mass",
            "attn_out_norm",
            "ffn_out_norm",
            "embed_norm",
            "resid_top_values",
            "attn_maps",
        ):
            np.testing.assert_allclose(
                getattr(got, name).astype(np.float32),
                getattr(alone, name).astype(np.float32),
                atol=2e-3 if name == "attn_maps" else 1e-4,
                rtol=1e-4,
                err_msg=name,
            )
        assert got.token_ids == list(prompt)


def test_hooks_removed_even_when_forward_fails():
    model = tiny_llama()
    lm = wrap(model)
    rec = Recorder(2, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(IndexError):
        with recording(model, lm.family, rec):
            model(torch.tensor([[1, 2, 500]]))  # token id past the vocabulary
    layers = lm.family.decoder_layers(model)
    assert not any(m._forward_hooks for m in model.modules())
    assert layers[0].self_attn.config._attn_implementation != "sinkhole"


def test_eager_fallback_when_model_bypasses_attention_interface():
    """A model whose attention never calls the interface: the probe notices and falls back to eager."""
    model = tiny_llama()
    probe = ModelProbe(wrap(model))
    ref = probe.run(IDS)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from sinkhole.probe import recorder as recorder_mod

    def plain_sdpa(self, layer, query, key, value, mask, scaling, **kw):
        # Computes attention but never reaches the recorder, like model code that bypasses the interface.
        return sdpa_attention_forward(model.model.layers[0].self_attn, query, key, value, mask, scaling=scaling)[0]

    original = recorder_mod.Recorder.attention
    try:
        recorder_mod.Recorder.attention = plain_sdpa
        with pytest.warns(UserWarning, match="bypasses"):
            got = probe.run(IDS)
    finally:
        recorder_mod.Recorder.attention = original
    np.testing.assert_allclose(got.attn_mass, ref.attn_mass, atol=1e-5)


def test_float16_overflow_is_reported():
    from sinkhole.errors import SinkholeError

    model = tiny_llama().half()
    with torch.no_grad():
        model.model.embed_tokens.weight[7] = 65504.0  # float16 max: the first residual add overflows
    with pytest.raises(SinkholeError, match="bfloat16 or --dtype float32"):
        ModelProbe(wrap(model)).run([7, 1, 2])
