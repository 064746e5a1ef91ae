"""Architecture discovery (sinkhole.models.discovery), hybrids, MLA and learned sinks on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sinkhole.analysis.core import analyze
from sinkhole.errors import SinkholeError
from sinkhole.models import families
from sinkhole.models.tiny import tiny_model
from sinkhole.probe.attention import attention_with_stats
from sinkhole.probe.loading import LoadedModel
from sinkhole.probe.probe import ModelProbe
from sinkhole.probe.support import IDS, IdTokenizer, eager_alpha, quiet
from sinkhole.render.analyze_text import render_analysis


def probe_of(model_type: str, **kw) -> ModelProbe:
    with quiet():
        return ModelProbe(LoadedModel.wrap(tiny_model(model_type), IdTokenizer(), name=model_type), **kw)


@pytest.mark.parametrize(
    "model_type, layers, style, attn_out, ffn_out, swiglu",
    [
        ("llama", "model.layers", "pre", "self_attn", "mlp", True),
        ("gemma3_text", "model.layers", "sandwich", "post_attention_layernorm", "post_feedforward_layernorm", True),
        ("olmo2", "model.layers", "post", "post_attention_layernorm", "post_feedforward_layernorm", True),
        ("gpt2", "transformer.h", "pre", "attn", "mlp", False),
        ("gpt_neox", "gpt_neox.layers", "parallel", "attention", "mlp", False),
        ("opt", "model.decoder.layers", "pre", "self_attn", "fc2", False),
    ],
)
def test_discovered_layout(model_type, layers, style, attn_out, ffn_out, swiglu):
    fam = probe_of(model_type).lm.family
    assert (fam.layers, fam.norm_style, fam.attn_out, fam.ffn_out, fam.swiglu) == (
        layers,
        style,
        attn_out,
        ffn_out,
        swiglu,
    )
    assert fam.discovery == "auto" and fam.layer_kinds == ("attention", "attention")


@pytest.mark.parametrize("model_type", ["gpt2", "olmo2", "gpt_neox", "gemma3_text", "opt", "granite"])
def test_block_contributions_add_up(model_type):
    """||h_out - h_in|| is bounded by the measured block norms, and equals them where one block is zero."""
    probe = probe_of(model_type)
    fam, model = probe.lm.family, probe.model
    states = {}
    handles = [
        layer.register_forward_pre_hook(
            lambda m, a, kw, l=l: states.__setitem__(("in", l), (a[0] if a else kw["hidden_states"]).clone()),
            with_kwargs=True,
        )
        for l, layer in enumerate(fam.decoder_layers(model))
    ]
    handles += [
        layer.register_forward_hook(
            lambda m, a, o, l=l: states.__setitem__(("out", l), (o[0] if isinstance(o, tuple) else o).clone())
        )
        for l, layer in enumerate(fam.decoder_layers(model))
    ]
    try:
        cap = probe.run(IDS)
    finally:
        for h in handles:
            h.remove()
    for l in range(2):
        delta = (states[("out", l)] - states[("in", l)])[0].norm(dim=-1).numpy()
        a, f = cap.attn_out_norm[l], cap.ffn_out_norm[l]
        assert np.isfinite(a).all() and np.isfinite(f).all()
        assert (delta <= a + f + 1e-4).all() and (delta >= np.abs(a - f) - 1e-4).all()


def test_scaled_branches_are_fitted():
    """Granite adds residual_multiplier x each branch (0.5 in the tiny config): discovery fits it."""
    fam = probe_of("granite").lm.family
    assert fam.norm_style == "pre" and fam.scales_of(0) == pytest.approx((0.5, 0.5), rel=1e-4)
    assert probe_of("llama").lm.family.scales_of(0) == (1.0, 1.0)


def test_mla_value_dim_differs_from_key_dim():
    """DeepSeek-V3's latent attention: value head dim 8, query/key head dim 16; alpha equals eager's."""
    probe = probe_of("deepseek_v3")
    cfg = probe.model.config
    assert cfg.v_head_dim != cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    cap = probe.run(IDS)
    ref = eager_alpha(probe.model, IDS)
    np.testing.assert_allclose(cap.attn_mass, np.stack(ref), atol=1e-4)


def test_hybrid_reports_attention_layers_only():
    probe = probe_of("qwen3_next")
    cap = probe.run(IDS)
    assert cap.model.layer_kinds == ["linear_attention", "attention"]
    assert np.isnan(cap.attn_mass[0]).all() and np.isfinite(cap.attn_mass[1]).all()
    np.testing.assert_allclose(cap.attn_mass[1], eager_alpha(probe.model, IDS)[0], atol=1e-4)
    r = analyze(cap)
    d = json.loads(r.to_json())  # strict JSON: no NaN
    assert d["layers"]["kinds"] == ["linear_attention", "attention"] and d["layers"]["attention"] == [1]
    assert d["heads"]["mass_on_top_sink"][0] == [None] * 4
    # averages come from the attention layer alone
    assert d["sinks"]["per_token_mass"] == pytest.approx(cap.attn_mass[1].mean(0).tolist(), abs=1e-6)
    assert "linear_attention layers 0 (no attention statistics)" in render_analysis(d)


def test_pure_ssm_model_is_one_line():
    with pytest.raises(SinkholeError, match="no attention to measure"):
        probe_of("mamba").run(IDS)


def test_learned_sink_mass_matches_brute_force():
    torch.manual_seed(0)
    B, Hq, Hkv, T, D = 2, 4, 2, 7, 8
    q, k, v = torch.randn(B, Hq, T, D), torch.randn(B, Hkv, T, D), torch.randn(B, Hkv, T, D)
    sinks = torch.randn(Hq)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :3] = False  # left padding in row 1
    mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None] & valid[:, None, None, :]
    _, colsum, _, sink_mass = attention_with_stats(
        q, k, v, mask, D**-0.5, sinks=sinks, query_valid=valid, block_bytes=64
    )
    scores = (q @ k.repeat_interleave(Hq // Hkv, 1).transpose(-1, -2)) * D**-0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    p = torch.softmax(torch.cat([scores, sinks[None, :, None, None].expand(B, Hq, T, 1)], -1), -1)
    p = torch.where(valid[:, None, :, None], p, torch.zeros(()))  # padded query rows count for nothing
    torch.testing.assert_close(sink_mass, p[..., -1].sum(-1))
    torch.testing.assert_close(colsum, p[..., :-1].sum(-2))
    assert attention_with_stats(q, k, v, mask, D**-0.5)[3] is None


def test_learned_sink_share_in_report():
    probe = probe_of("gpt_oss")
    cap = probe.run(IDS)
    n = len(IDS)
    # what the keys receive plus what the learned sink absorbs is all of the attention
    np.testing.assert_allclose(cap.attn_colsum.sum(-1) / n + cap.sink_share, 1.0, atol=1e-5)
    d = json.loads(analyze(cap).to_json())
    ls = d["learned_sinks"]
    assert np.array(ls["share"]).shape == (2, 4) and 0 < ls["mean_share"] < 1
    assert "Learned sinks  absorb" in render_analysis(d)
    from sinkhole.render.html import render_html

    assert "Learned sinks" in render_html(analyze(cap))


def test_override_path_is_reported(monkeypatch):
    monkeypatch.setitem(families.OVERRIDES, "llama", {"name": "llama-override"})
    cap = probe_of("llama").run(IDS)
    assert cap.model.discovery == "override:llama" and cap.model.family == "llama-override"
    assert "discovery override:llama" in render_analysis(analyze(cap).to_dict())


def test_hybrid_eager_fallback_maps_attention_layers(monkeypatch):
    """Through the eager path (as for a model that bypasses the interface), a hybrid's attention maps
    land on its attention layers, not on its first layers."""
    monkeypatch.setitem(families.OVERRIDES, "jamba", {"uses_interface": False})
    probe = probe_of("jamba")
    with pytest.warns(UserWarning, match="bypasses"):
        cap = probe.run(IDS)
    assert cap.model.attention_path == "eager" and cap.model.layer_kinds == ["linear_attention", "attention"]
    assert np.isnan(cap.attn_mass[0]).all()
    np.testing.assert_allclose(cap.attn_mass[1], eager_alpha(probe.model, IDS)[0], atol=1e-6)
