"""The mechanism analyses on tiny models with a PLANTED spike (weights built so the answer is known),
and the pure functions on constructed arrays. Integration checks on SmolLM2 live in
tests/test_mechanism_integration.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_gemma3, tiny_llama, wrap

from sinkhole.analysis.mechanism import amplifier as amp
from sinkhole.analysis.mechanism import channels as chn
from sinkhole.analysis.mechanism import lifecycle as lc
from sinkhole.analysis.mechanism.normalization import mass_share, normalization, pair_means
from sinkhole.analysis.mechanism.sink_keys import effective_dim, query_alignment, sink_keys
from sinkhole.experiments.gather import Plan, gather
from sinkhole.experiments.interventions import channel_edit, sink_masked
from sinkhole.experiments.mechanism_study import MechanismConfig, run_mechanism
from sinkhole.experiments.perplexity import perplexity
from sinkhole.experiments.vocab_sweep import vocab_sweep
from sinkhole.probe.probe import ModelProbe

SPIKE_TOKEN, IN_CH, OUT_CH, UP_LAYER, DOWN_LAYER = 7, 3, 11, 1, 3


def planted(make=tiny_llama):
    """4-layer tiny model where token SPIKE_TOKEN gets a huge value in channel OUT_CH from layer
    UP_LAYER's FFN (unit 0 reads its embedding channel IN_CH quadratically) and loses ~90% of it in
    layer DOWN_LAYER's FFN (unit 0 reads OUT_CH and writes the opposite sign). In a sandwich model
    the post-FFN norm rescales every FFN output to norm ~sqrt(D), so there the magnitude is planted
    in that norm's weight at OUT_CH (the only token whose FFN writes OUT_CH is the planted one)."""
    model = make(num_hidden_layers=4)
    fam = wrap(model).family
    layers = fam.decoder_layers(model)

    def plant_unit(layer, read, write, value):
        mlp = fam.part(layer, fam.mlp)
        for name in (fam.gate_proj, fam.up_proj):
            w = fam.part(mlp, name).weight
            w[:, read] = 0.0  # no other unit reads this channel
            w[0] = 0.0
            w[0, read] = 3.0 if read == IN_CH else 1.0
        d = fam.part(mlp, fam.down_proj).weight
        d[:, 0] = 0.0
        d[write, 0] = value

    with torch.no_grad():
        emb = fam.part(model, fam.embed).weight
        emb[:, [IN_CH, OUT_CH]] = 0.0  # only the planted token carries IN_CH; nobody starts with OUT_CH
        emb[SPIKE_TOKEN] = 0.0
        emb[SPIKE_TOKEN, IN_CH] = (
            20.0  # large enough that a sandwich model's normed block outputs stay small beside it
        )
        for layer in layers:  # nothing else writes IN_CH or OUT_CH
            fam.part(layer, fam.attn).o_proj.weight[[IN_CH, OUT_CH]] = 0.0
            fam.part(fam.part(layer, fam.mlp), fam.down_proj).weight[[IN_CH, OUT_CH]] = 0.0
        plant_unit(layers[UP_LAYER], IN_CH, OUT_CH, 100.0)
        plant_unit(layers[DOWN_LAYER], OUT_CH, OUT_CH, -800.0)
        if fam.ffn_out != fam.mlp:  # sandwich: the post-FFN norm sets the size
            fam.part(layers[UP_LAYER], fam.ffn_out).weight[OUT_CH] = 1000.0
            fam.part(layers[DOWN_LAYER], fam.ffn_out).weight[OUT_CH] = 900.0
    return model


def tiny_gemma3_4(**kw):
    return tiny_gemma3(layer_types=["sliding_attention", "full_attention"] * 2, **kw)


def prompts(n=4, T=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(12, 99, (T - i % 2,), generator=g).tolist()
        out.append([SPIKE_TOKEN] + ids)
    return out


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def planted_run(request):
    model = planted(tiny_llama if request.param == "llama" else tiny_gemma3_4)
    probe = ModelProbe(wrap(model))
    mech, reports = run_mechanism(probe, prompts(), chat=False, cfg=MechanismConfig(interventions=False))
    return probe, mech, reports


def test_planted_spike_is_found(planted_run):
    _, mech, reports = planted_run
    for r in reports:
        assert [s.position for s in r.spike_tokens] == [0]
    t = mech.targets
    assert not t.fallback and t.n == 4
    assert t.step_up_layer == UP_LAYER
    assert t.spike_channels[0] == OUT_CH
    assert mech.example is reports[0] and mech.summary.step_up_layer == UP_LAYER


def test_lifecycle_names_the_planted_blocks(planted_run):
    _, mech, _ = planted_run
    for tok in mech.lifecycle.tokens:
        assert tok.rise == f"L{UP_LAYER}.ffn" and tok.rise_block == 2 * UP_LAYER + 1
        assert tok.fall == f"L{DOWN_LAYER}.ffn"
        assert tok.main_channel == OUT_CH
        assert tok.step_down_cancels[f"L{DOWN_LAYER}.ffn"] is True
        assert tok.plateau_blocks == 2 * DOWN_LAYER + 1 - (2 * UP_LAYER + 1) - 1
        # the core's per-layer step-up layer is the layer of the step-up block
        assert tok.core_step_up_layers[0] == tok.rise_block // 2
    assert mech.lifecycle.rise_counts == {f"L{UP_LAYER}.ffn": 4} and mech.lifecycle.rise_block_mode == 2 * UP_LAYER + 1
    trace = mech.lifecycle.tokens[0].trace
    assert len(trace.blocks) == 8 and trace.block_top3_channels[2 * UP_LAYER + 1][0] == OUT_CH


def test_channels_activation_amplifier_normalization(planted_run):
    _, mech, _ = planted_run
    ch = mech.channels
    assert ch.main == OUT_CH and ch.ratio_cv_across_layers[0] == 0.0
    act = mech.activation
    # unit 0 sees a large positive gate input on the spike token: SiLU is nearly the identity there
    assert act.spike.cos > 0.99 and act.spike.cos > act.other.cos
    a = mech.amplifier.channels[0]
    assert a.channel == OUT_CH and a.fro_rank == 1 and a.fro_over_median > 10
    assert a.dominance > 10
    assert a.alignment_spike > 0.9 > 0.5 > a.alignment_other
    assert a.quadratic_over_actual == pytest.approx(1.0, abs=0.05)
    gain = mech.amplifier.post_block_gain[0]
    if planted_run[0].lm.family.norm_style == "pre":
        assert gain == pytest.approx(1.0, rel=1e-5)  # pre-norm: the MLP output is the block output
    else:
        # sandwich: the post-FFN norm maps the (one-channel) MLP output to sqrt(D) x (1 + 1000) there,
        # while the MLP wrote 100 x gelu(g) x g with g = 3 x sqrt(D) (the normed planted input)
        g = 3 * 32**0.5
        assert gain == pytest.approx(32**0.5 * 1001 / (100 * g * g), rel=0.05)
    n = mech.normalization
    assert n.after.spike_sparsity > 0.9 > n.after.other_sparsity
    assert n.after.cos_across_tokens is None and n.after.n_pairs_prompts == 6


def test_gather_block_bookkeeping(tiny_model):
    """h_l = h_{l-1} + a_l + f_l for every family: the lifecycle's residuals add up."""
    lm = wrap(tiny_model)
    seqs = [[5, 6, 7, 8], [9, 10, 11]]
    plan = Plan(spikes=[(0, 0), (1, 2)], channels=[1, 2], step_up=1, sinks=[(0, 0), (1, 1)], others=[(0, 2), (1, 3)])
    g = gather(lm, seqs, plan)
    for i in range(2):
        prev = np.concatenate([g.embed[i][None], g.layer_out[:-1, i]])
        np.testing.assert_allclose(prev + g.attn_out[:, i] + g.ffn_out[:, i], g.layer_out[:, i], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        hs = tiny_model(torch.tensor([seqs[0]]), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(g.layer_out[0, 0], hs[1][0, 0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g.chan[0, 0, :, 0], hs[1][0, :, 1].numpy(), rtol=1e-4, atol=1e-5)
    assert g.sink_keys.shape[:2] == (2, 2) and g.other_queries.shape[1] == 2


def test_frobenius_closed_form_matches_explicit():
    torch.manual_seed(0)
    wg, wu, wd = torch.randn(24, 10), torch.randn(24, 10), torch.randn(10, 24)
    fro = amp.frobenius_norms(wg, wu, wd)
    explicit = [float(torch.linalg.matrix_norm(amp.u_matrix(wg, wu, wd, k))) for k in range(10)]
    np.testing.assert_allclose(fro, explicit, rtol=1e-9)


def test_spectrum_of_planted_rank_one():
    D, F = 8, 16
    wg, wu, wd = torch.zeros(F, D), torch.zeros(F, D), torch.zeros(D, F)
    wg[0, 2] = wu[0, 2] = 2.0
    wd[5, 0] = 3.0  # U_5 = 12 e_2 e_2^T
    vals, star = amp.spectrum(amp.u_matrix(wg, wu, wd, 5))
    assert vals[0] == pytest.approx(12.0) and abs(star[2]) == pytest.approx(1.0)


def test_step_blocks_and_residuals():
    L, D = 3, 4
    attn, ffn = np.zeros((L, D), np.float32), np.zeros((L, D), np.float32)
    ffn[0, 1], ffn[2, 1] = 100.0, -90.0
    embed = np.ones(D, np.float32)
    out = np.cumsum(attn + ffn, axis=0) + embed
    d = lc.lifecycle(embed, attn, ffn, out)
    assert d.rise == "L0.ffn" and d.fall == "L2.ffn" and d.plateau_blocks == 3
    assert d.step_down_cancels == {"L2.ffn": True} and d.trace is None
    assert "trace" not in d.to_dict() and lc.lifecycle(embed, attn, ffn, out, trace=True).trace.blocks[1] == "L0.ffn"


def test_channel_profile_constant_ratio():
    L, S = 5, 3
    base = np.arange(1, L * S + 1, dtype=np.float32).reshape(L, S)
    values = np.stack([base, -0.5 * base], axis=-1)
    prof = chn.channel_profile(values, [[1, 2, 3]] * S, [9, 4])
    assert prof.ratio_to_main == [1.0, -0.5]
    assert prof.ratio_cv_across_layers[1] == pytest.approx(0.0, abs=1e-7)
    assert chn.pool_channels([[1, 2], [1], [1, 3]]) == [1]
    assert chn.pool_channels([[1, 2], [2, 1], [1, 2]], main=2) == [2, 1]


def test_normalization_functions():
    v = np.zeros((3, 4))
    v[:, 0], v[:, 1] = 3.0, 4.0
    assert mass_share(v, [0]) == pytest.approx([9 / 25] * 3)
    cos = np.ones((3, 3))
    assert pair_means(cos, rows=[0, 1, 2], ids=[5, 5, 6]) == {
        "cos_across_prompts": 1.0,
        "n_pairs_prompts": 1,
        "cos_across_tokens": 1.0,
        "n_pairs_tokens": 2,
    }
    out = normalization(v, v, 2, [0, 1], [0, 1], [5, 5])
    assert out.after.spike_sparsity == pytest.approx(1.0)


def test_sink_keys_planted_subspace():
    rng = np.random.default_rng(0)
    L, Ns, O, Hkv, Hq, Dh = 2, 6, 40, 1, 2, 16
    direction = np.zeros(Dh)
    direction[3] = 1.0
    sink = np.tile(direction, (L, Ns, Hkv, 1)) * rng.uniform(1, 2, (L, Ns, Hkv, 1))  # rank one
    other_k = rng.normal(size=(L, O, Hkv, Dh))
    q = rng.normal(size=(L, O, Hq, Dh)) * 0.1
    q[:, :, 0, 3] += 5.0  # head 0 queries point at the sink direction
    mass = np.array([[0.8, 0.1], [0.7, 0.05]])
    out = sink_keys(sink, other_k, q, mass, epsilon=0.3)
    assert out.mean_sink_pr == pytest.approx(1.0) and out.mean_sink_r90 == 1
    assert out.mean_other_pr > 3
    assert out.sink_heads == [[0, 0], [1, 0]] and out.layers is None
    assert out.energy_share_sink_heads > 0.9 > 0.2 > out.energy_share_other_heads
    pr, r = effective_dim(np.eye(4))
    assert pr == pytest.approx(4.0) and r == 4
    assert query_alignment(np.eye(4)[:1], np.eye(4)[:1], np.eye(4)[0])[0] == pytest.approx(1.0)


def test_vocab_sweep_finds_the_planted_token():
    lm = wrap(planted())
    out = vocab_sweep(lm, ref_ids=prompts(1, T=20)[0][1:] + [20, 21], threshold=10.0, batch_size=32)
    assert out.n_spike == 1 and out.exceptions_are == "spiking tokens"
    assert out.exceptions[0].id == SPIKE_TOKEN and out.n_tokens == 99 and out.vocab_size == 99 and not out.sampled


def test_perplexity_matches_model_loss(tiny_model):
    lm = wrap(tiny_model)
    ids = list(range(3, 40))
    with torch.no_grad():
        loss = tiny_model(torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert perplexity(lm, [ids], chunk=7) == pytest.approx(float(torch.exp(loss)), rel=1e-4)


def test_sink_masked_equals_dropping_the_token(tiny_model):
    """With key 0 hidden from every later query, positions >= 1 compute exactly what the sequence
    without token 0 computes (RoPE scores depend on relative positions only)."""
    lm = wrap(tiny_model)
    ids = [5, 17, 23, 42, 8, 9, 61]
    with torch.no_grad():
        alone = tiny_model(torch.tensor([ids[1:]])).logits[0]
        with sink_masked(lm, [0]):
            masked = tiny_model(torch.tensor([ids])).logits[0, 1:]
        plain = tiny_model(torch.tensor([ids])).logits[0, 1:]
    torch.testing.assert_close(masked, alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain, alone, atol=1e-4)  # and the mask is gone afterwards


def test_channel_edit_sets_and_restores():
    model = planted()
    lm = wrap(model)
    x = torch.tensor([[SPIKE_TOKEN, 20, 21]])
    with torch.no_grad():
        before = model(x, output_hidden_states=True).hidden_states[UP_LAYER + 1][0, 0, OUT_CH]
        with channel_edit(lm, UP_LAYER, [0], [OUT_CH], [1.5]):
            edited = model(x, output_hidden_states=True).hidden_states[UP_LAYER + 1][0, 0, OUT_CH]
        after = model(x, output_hidden_states=True).hidden_states[UP_LAYER + 1][0, 0, OUT_CH]
    assert float(before) > 1000 and float(edited) == pytest.approx(1.5) and float(after) == float(before)
