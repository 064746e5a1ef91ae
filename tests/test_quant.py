"""Quantization statistics, hints and fake quantization on tiny models with a planted outlier.

The planted outlier: token PLANT_ID's embedding carries a huge value in channel PLANT_CH, a channel no
other token's embedding uses and that layer 0's attention never writes (its o_proj row is zeroed), and
layer 0's FFN norm weight is large there. So layer 0's gate/up input has one huge entry exactly on the
tokens PLANT_ID, at channel PLANT_CH: a channel outlier and a PrefixQuant outlier token at once.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_llama, wrap

from sinkhole.errors import SinkholeError
from sinkhole.experiments.perplexity import perplexity
from sinkhole.profiles.profile import PROFILE_SCHEMA, SinkProfile
from sinkhole.quant.backends import BACKENDS, Backend, get_backend, register
from sinkhole.quant.calibration import collect_stats
from sinkhole.quant.evidence import scheme_specs, validate
from sinkhole.quant.fakequant import (
    QMAX,
    QuantSpec,
    act_per_tensor,
    act_per_token,
    fake_quantized,
    int8_fake,
    int8_outlier_linear,
    smoothing_scales,
    weight_per_channel,
)
from sinkhole.quant.hints import (
    get_quantization_hints,
    int8_threshold,
    prefix_tokens,
    skip_modules,
    write_hints,
)
from sinkhole.quant.stats import (
    OUTLIER_TOKEN_RATIO,
    CalibrationStats,
    LinearInputStats,
    decoder_linears,
)

PLANT_ID, PLANT_CH = 7, 5


def planted_llama():
    model = tiny_llama(seed=1)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, PLANT_CH] = 0.0
        emb[PLANT_ID, PLANT_CH] = 400.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[PLANT_CH] = 0.0
            layer.mlp.down_proj.weight[PLANT_CH] = 0.0
        model.model.layers[0].post_attention_layernorm.weight[PLANT_CH] = 200.0
    return wrap(model, name="planted")


def sequences(n=6, length=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for _ in range(n):
        ids = torch.randint(10, 99, (length,), generator=g).tolist()
        ids[3] = PLANT_ID  # the planted token, at a fixed later position
        seqs.append(ids)
    return seqs


@pytest.fixture(scope="module")
def planted():
    lm = planted_llama()
    return lm, collect_stats(lm, sequences(), source="test")


# ---- statistics ---------------------------------------------------------------------------------------


def test_stats_find_planted_channel_and_token(planted):
    lm, stats = planted
    gate = stats.modules["model.layers.0.mlp.gate_proj"]
    assert int(gate.channel_absmax.argmax()) == PLANT_CH
    assert float(gate.channel_ratios()[PLANT_CH]) > 100
    assert gate.share_ge(6.0) > 0
    assert gate.token_ratio_max > OUTLIER_TOKEN_RATIO
    assert set(gate.outlier_positions) == {3} and gate.outlier_positions[3] == 6
    assert set(gate.outlier_token_ids) == {PLANT_ID}
    # q/k/v read one tensor, gate/up another: grouped by the module that reads it first.
    assert stats.modules["model.layers.0.mlp.up_proj"].input_group == "model.layers.0.mlp.gate_proj"
    assert stats.modules["model.layers.0.self_attn.v_proj"].input_group == "model.layers.0.self_attn.q_proj"
    # the planted layer's gate/up are hot; layer 1's attention inputs are not.
    assert "model.layers.0.mlp.gate_proj" in stats.hot_modules()
    assert "model.layers.1.self_attn.q_proj" not in stats.hot_modules()
    d = stats.to_dict()
    json.dumps(d)
    assert d["modules"][0]["name"] == "model.layers.0.self_attn.q_proj"
    assert len(d["modules"]) == 2 * 7 and stats.n_tokens == 6 * 24


def test_running_stats_match_direct_computation():
    torch.manual_seed(0)
    xs = [torch.randn(17, 12) * 3 for _ in range(3)]
    xs[1][0] *= 500  # one outlier token in sequence 1, position 0
    s = LinearInputStats("m", 0, "down_proj", 12)
    for x in xs:
        s.update(x, token_ids=list(range(17)))
    allx = torch.cat(xs)
    assert torch.allclose(s.channel_absmax, allx.abs().amax(0))
    assert s.count_ge[3] == int((allx.abs() >= 6).sum()) and s.n_values == allx.numel()
    assert s.n_outlier_tokens == 1 and dict(s.outlier_positions) == {0: 1}
    assert s.examples[0]["sequence"] == 1
    tok = xs[1].abs().amax(1)
    assert s.token_ratio_max == pytest.approx(float(tok.max() / tok.median()), rel=1e-5)
    cols = sum(int((x.abs().amax(0) >= 6).sum()) for x in xs) / 3
    assert s.mean_outlier_columns(6.0) == pytest.approx(cols)


def test_skip_positions_drop_prefix_rows():
    lm = planted_llama()
    seqs = [[PLANT_ID] + s[4:] for s in sequences(n=3)]  # the planted token only at position 0
    with_prefix = collect_stats(lm, seqs)
    without = collect_stats(lm, seqs, skip_positions=1)
    name = "model.layers.0.mlp.gate_proj"
    assert with_prefix.modules[name].outlier_positions == {0: 3}
    assert without.modules[name].n_outlier_tokens == 0
    assert without.modules[name].absmax < with_prefix.modules[name].absmax / 10


def test_hooks_removed_after_collect(planted):
    lm, _ = planted
    for _, (_, lin) in decoder_linears(lm.model, lm.family).items():
        assert not lin._forward_pre_hooks


# ---- fake quantization --------------------------------------------------------------------------------


def test_int8_round_trip_error_bounds():
    torch.manual_seed(0)
    x = torch.randn(5, 64) * 4
    s = x.abs().amax() / QMAX
    q = act_per_tensor(x, x.abs().amax())
    assert (q - x).abs().max() <= s / 2 + 1e-6
    assert ((q / s).round() - q / s).abs().max() < 1e-3  # on the int8 grid
    assert (q / s).abs().max() <= QMAX + 1e-4
    qt = act_per_token(x)
    st = x.abs().amax(-1, keepdim=True) / QMAX
    assert ((qt - x).abs() <= st / 2 + 1e-6).all()
    w = torch.randn(8, 64)
    qw = weight_per_channel(w)
    assert ((qw - w).abs() <= w.abs().amax(1, keepdim=True) / QMAX / 2 + 1e-6).all()
    assert torch.equal(qw.abs().amax(1), w.abs().amax(1))  # row absmax is on the grid exactly
    # static clamps beyond the calibration range
    assert float(act_per_tensor(torch.tensor([10.0]), 1.0)) == pytest.approx(1.0)
    assert torch.equal(int8_fake(torch.zeros(3), torch.zeros(1)), torch.zeros(3))


def test_outlier_column_decomposition_is_exact_on_outliers():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 16)
    x[0, 2, 4] = 300.0
    w = torch.randn(8, 16)
    y = int8_outlier_linear(x, w, weight_per_channel(w), None, threshold=6.0)
    y_naive = act_per_tensor(x, x.abs().amax()) @ weight_per_channel(w).T
    exact = x @ w.T
    assert (y - exact).abs().max() < (y_naive - exact).abs().max() / 5
    # threshold 0 keeps every column in float: exactly the float layer
    b = torch.randn(8)
    assert torch.allclose(
        int8_outlier_linear(x, w, weight_per_channel(w), b, threshold=0.0),
        torch.nn.functional.linear(x, w, b),
        atol=1e-5,
    )
    # a threshold above every value is plain per-token int8
    y_all = int8_outlier_linear(x, w, weight_per_channel(w), None, threshold=1e9)
    assert torch.allclose(y_all, act_per_token(x) @ weight_per_channel(w).T, atol=1e-5)


def test_smoothing_is_exact_in_float_and_balances():
    torch.manual_seed(0)
    a, w = torch.rand(16) * 100 + 1, torch.rand(16) + 0.1
    s = smoothing_scales(a, w, 0.5)
    assert torch.allclose(a / s, w * s, rtol=1e-4)  # alpha 0.5 equalises the two ranges
    lin = torch.nn.Linear(16, 4)
    x = torch.randn(1, 3, 16)
    spec = QuantSpec("float", smooth=s)
    from sinkhole.quant.fakequant import FakeQuantLinear

    assert torch.allclose(FakeQuantLinear(lin, spec)(x), lin(x), atol=1e-5)


def test_fake_quantized_restores_modules_even_on_error(planted):
    lm, stats = planted
    before = {n: m for n, (_, m) in decoder_linears(lm.model, lm.family).items()}
    ids = torch.tensor([sequences(n=1)[0]])
    ref = lm.model(ids).logits
    with pytest.raises(RuntimeError):
        with fake_quantized(lm.model, scheme_specs("dynamic", lm, stats, {})):
            assert not torch.allclose(lm.model(ids).logits, ref)
            raise RuntimeError("boom")
    after = {n: m for n, (_, m) in decoder_linears(lm.model, lm.family).items()}
    assert all(after[n] is before[n] for n in before)
    assert torch.equal(lm.model(ids).logits, ref)


def test_passthrough_rows_equal_float(planted):
    lm, stats = planted
    ids = torch.tensor([sequences(n=1)[0]])
    ref = lm.model(ids).logits
    specs = {n: QuantSpec("static", absmax=1.0, passthrough=4) for n in stats.modules}
    with fake_quantized(lm.model, specs):
        out = lm.model(ids).logits
    assert torch.allclose(out[0, :4], ref[0, :4], atol=1e-5)  # causal: prefix rows see only the prefix
    assert not torch.allclose(out[0, 4:], ref[0, 4:], atol=1e-3)


# ---- hints ----------------------------------------------------------------------------------------------


def test_hints_name_planted_modules(planted):
    lm, stats = planted
    skip = skip_modules(stats)
    assert skip[-1] == "lm_head"
    assert {"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"} <= set(skip)
    assert not any(".self_attn." in m for m in skip)  # attention inputs are normed: no outlier there
    h = get_quantization_hints(stats, "bitsandbytes", family=lm.family)
    assert h["config"]["llm_int8_skip_modules"] == skip
    chans = h["basis"]["outlier_channels"]["model.layers.0.mlp.gate_proj"]
    assert chans[0]["channel"] == PLANT_CH
    t, why = int8_threshold(stats)
    # the planted token lights up many down_proj columns at once: that module sets the threshold
    assert why["worst_module"] == "model.layers.0.mlp.down_proj"

    def fits(e):
        return all(m.mean_outlier_columns(e) <= max(1.0, 0.02 * m.n_channels) for m in stats.modules.values())

    assert why["fits_budget"] == fits(t)
    assert not any(fits(e) for e in (6.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0) if e < t)


def test_prefix_hint_lists_recurring_outlier_token(planted):
    lm, stats = planted
    p = prefix_tokens(stats)
    assert p["token_ids"] == [PLANT_ID]  # no position-0 outliers here, one recurring token
    assert p["basis"]["outlier_tokens_at_position_0"] == 0


class _Tok:
    bos_token_id = 1

    def decode(self, ids):
        return "".join(f"<{i}>" for i in ids)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [42] if text == "\n" else [3, 4]}


def test_prefix_hint_uses_bos_for_position_zero():
    s = LinearInputStats("model.layers.0.mlp.down_proj", 0, "down_proj", 4)
    for _ in range(4):
        x = torch.ones(8, 4)
        x[0] *= 1000
        s.update(x, token_ids=[9] * 8)
    stats = CalibrationStats(
        {"name": "t", "architecture": "llama"}, {s.name: s}, 4, 32, "test", first_token_ids=[9] * 4
    )
    assert prefix_tokens(stats, _Tok())["token_ids"] == [1]
    assert prefix_tokens(stats)["token_ids"] == [9]  # no tokenizer: the calibration's first token


def profile():
    return SinkProfile(
        model={"name": "tiny", "architecture": "llama", "weights_id": "", "n_layers": 2},
        sink_rule={"positions": [0], "token_texts": ["\n"], "description": ""},
        sink_tokens=[],
        spike_channels=[{"channel": 3, "typical_value": 100.0, "frequency": 1.0}],
        step_up_layers=[1],
        step_down_layers=[3],
        sink_heads=[],
        pinned_slots=2,
        prompts={},
        schema=PROFILE_SCHEMA,
    )


def test_hints_from_profile():
    p = profile()
    h = get_quantization_hints(p, "torchao")
    assert h["config"]["modules_to_not_convert"] == [
        "model.layers.1.mlp.down_proj",
        "model.layers.3.mlp.down_proj",
        "lm_head",
    ]
    assert h["basis"]["spike_channels"][0]["channel"] == 3
    pre = get_quantization_hints(p, "prefix", tokenizer=_Tok())
    assert pre["config"]["token_ids"] == [1, 42]
    with pytest.raises(SinkholeError, match="calibrat"):
        get_quantization_hints(p, "smoothquant")
    with pytest.raises(SinkholeError, match="did you mean 'torchao'"):
        get_quantization_hints(p, "torchoa")


# ---- each backend's output loads into its library's own config class ------------------------------------


def test_bitsandbytes_config_loads(planted, tmp_path):
    from transformers import BitsAndBytesConfig

    lm, stats = planted
    h = get_quantization_hints(stats, "bitsandbytes", family=lm.family)
    (path,) = write_hints(h, tmp_path / "bnb.json")
    cfg = BitsAndBytesConfig.from_dict(json.loads(path.read_text()))
    assert cfg.load_in_8bit and cfg.llm_int8_threshold == h["config"]["llm_int8_threshold"]
    assert cfg.llm_int8_skip_modules == h["config"]["llm_int8_skip_modules"]


def test_hints_summary_is_short_and_names_the_file(planted, tmp_path):
    from sinkhole.render.quant_text import render_hints_summary

    lm, stats = planted
    h = get_quantization_hints(stats, "bitsandbytes", family=lm.family)
    paths = write_hints(h, tmp_path / "bnb.json")
    text = render_hints_summary(h, paths)
    assert text.splitlines()[0].endswith(str(tmp_path / "bnb.json")) and "llm_int8_threshold" in text
    assert "{" not in text and len(text.splitlines()) < 15  # a summary, not the JSON (the file holds the config)
    skip = h["config"]["llm_int8_skip_modules"]
    assert f"llm_int8_skip_modules  {len(skip)}: {skip[0]}" in text


def _torchao_dict_schema_ok(d: dict) -> bool:
    # TorchAoConfig.to_dict() layout (transformers 5): quant_type = {"default": torchao config_to_dict(...)}
    qt = d["quant_type"]
    return (
        d["quant_method"] == "torchao"
        and set(qt) == {"default"}
        and qt["default"]["_type"]
        and isinstance(qt["default"]["_data"], dict)
        and isinstance(d["modules_to_not_convert"], list)
    )


def test_torchao_config_loads(planted, tmp_path):
    lm, stats = planted
    h = get_quantization_hints(stats, "torchao", family=lm.family)
    (path,) = write_hints(h, tmp_path / "ao.json")
    d = json.loads(path.read_text())
    assert _torchao_dict_schema_ok(d)
    pytest.importorskip("torchao")
    from transformers import TorchAoConfig

    cfg = TorchAoConfig.from_dict(d)
    assert type(cfg.quant_type).__name__ == "Int8DynamicActivationInt8WeightConfig"
    assert cfg.modules_to_not_convert == h["config"]["modules_to_not_convert"]


def test_llmcompressor_recipe_schema_and_load(planted, tmp_path):
    import yaml

    lm, stats = planted
    h = get_quantization_hints(stats, "llm-compressor", family=lm.family, alpha=0.8)
    (path,) = write_hints(h, tmp_path / "recipe.yaml")
    d = yaml.safe_load(path.read_text())
    mods = d["default_stage"]["default_modifiers"]
    sq, qm = mods["SmoothQuantModifier"], mods["QuantizationModifier"]
    assert sq["smoothing_strength"] == 0.8
    assert sq["mappings"][0] == [["re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"], "re:.*input_layernorm$"]
    assert sq["mappings"][2] == [["re:.*down_proj$"], "re:.*up_proj$"]
    assert qm["ignore"] == skip_modules(stats)
    assert qm["config_groups"]["group_0"]["input_activations"]["strategy"] == "tensor"
    pytest.importorskip("llmcompressor")
    from llmcompressor.recipe import Recipe

    recipe = Recipe.create_instance(str(path))
    kinds = [type(m).__name__ for m in recipe.modifiers]
    assert kinds == ["SmoothQuantModifier", "QuantizationModifier"]
    assert recipe.modifiers[0].smoothing_strength == 0.8
    assert recipe.modifiers[1].ignore == qm["ignore"]


def test_smoothquant_scales_file(planted, tmp_path):
    lm, stats = planted
    h = get_quantization_hints(stats, "smoothquant", family=lm.family, alpha=0.7)
    pt, side = write_hints(h, tmp_path / "scales")
    scales = torch.load(pt)
    assert set(scales) == set(stats.modules)
    g = scales["model.layers.0.mlp.gate_proj"]
    assert g.shape == (32,) and int(g.argmax()) == PLANT_CH
    assert json.loads(side.read_text())["config"] == {"alpha": 0.7, "act_scales_file": "scales.pt"}


def test_every_backend_is_json_ready(planted):
    lm, stats = planted
    for b in BACKENDS:
        if b != "smoothquant":
            json.dumps(get_quantization_hints(stats, b, family=lm.family))


def test_backend_registry_did_you_mean_and_extension(planted, tmp_path):
    lm, stats = planted
    with pytest.raises(SinkholeError, match="did you mean 'llm-compressor'"):
        get_quantization_hints(stats, "llm-compresor", family=lm.family)
    # a new backend is one register() call: hints and write_hints pick it up by name
    register(Backend("toy", f"{__name__}:_toy_config", "sinkhole.quant.hints:write_json", "test only"))
    try:
        h = get_quantization_hints(stats, "toy", family=lm.family)
        assert h["config"] == {"skip": h["basis"]["toy_skip"]} and "lm_head" in h["config"]["skip"]
        (path,) = write_hints(h, tmp_path / "toy.json")
        assert json.loads(path.read_text()) == h["config"]
        assert get_backend("toy").name == "toy"
    finally:
        del BACKENDS["toy"]
    with pytest.raises(ValueError, match="registered twice"):
        register(BACKENDS["prefix"])


def _toy_config(ctx):
    return {"skip": ctx.skip}, ["a toy"], {"toy_skip": ctx.skip}


# ---- validation -------------------------------------------------------------------------------------------


def test_validate_orders_schemes(planted):
    lm, stats = planted
    calib = sequences()
    held = sequences(n=3, seed=1)
    hints = {"threshold": 6.0, "alpha": 0.8, "skip": skip_modules(stats), "prefix": [PLANT_ID]}
    r = validate(lm, stats, calib, held, hints).to_dict()
    ppl = {x["scheme"]: x["perplexity"] for x in r["results"]}
    assert set(ppl) == {
        "float",
        "naive_static",
        "dynamic",
        "int8_outliers",
        "smoothquant",
        "skip_hinted",
        "prefix",
        "float_prefix",
    }
    assert all(math.isfinite(v) for v in ppl.values())
    assert ppl["float"] == pytest.approx(perplexity(lm, held))
    # the planted outlier wrecks one static scale; outlier handling recovers most of it
    assert ppl["naive_static"] > ppl["float"]
    assert abs(ppl["int8_outliers"] - ppl["float"]) < abs(ppl["naive_static"] - ppl["float"])
    assert abs(ppl["skip_hinted"] - ppl["float"]) < abs(ppl["naive_static"] - ppl["float"])
    for x in r["results"]:
        if x["beats_naive"] is not None:
            assert x["beats_naive"] == (x["perplexity"] < ppl["naive_static"])
    json.dumps(r)


# ---- texts ----------------------------------------------------------------------------------------------


class _CharTok:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 97 for c in text]}


def test_calibration_and_heldout_texts_are_disjoint(tmp_path):
    from sinkhole.quant.texts import calibration_sequences, heldout_sequences, read_text

    a, b = read_text("builtin", 0), read_text("builtin", 1)
    assert a and b and a[:2000] not in b and b[:2000] not in a
    cal = calibration_sequences(_CharTok(), n=3, length=50)
    held = heldout_sequences(_CharTok(), n=2, length=40)
    assert [len(s) for s in cal] == [50] * 3 and [len(s) for s in held] == [40] * 2
    f = tmp_path / "c.txt"
    f.write_text("abcdefghij" * 3)
    assert calibration_sequences(_CharTok(), f, n=5, length=10) == [[ord(c) % 97 for c in "abcdefghij"]] * 3
    with pytest.raises(SinkholeError, match="not found"):
        calibration_sequences(_CharTok(), tmp_path / "missing.txt")
    with pytest.raises(SinkholeError, match="fewer than one sequence"):
        calibration_sequences(_CharTok(), f, n=1, length=100)
