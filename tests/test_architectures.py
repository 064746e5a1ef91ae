"""Every causal-LM model type in transformers' auto mapping, built tiny (2 layers, hidden 64, float32,
random weights from the config class's defaults with `sinkhole.models.tiny`'s generic overrides):
the probe's alpha against eager `output_attentions`. The list comes from the mapping, not from us;
types that cannot be built tiny or are not decoder-only are skipped with their reason recorded.
~45 s on a 2-core CPU for ~200 types (docs/architectures.md is rendered from the same sweep)."""

from __future__ import annotations

import pytest

from sinkhole.models.tiny import causal_lm_types
from sinkhole.probe.support import ATOL, sweep

# Named in issue #12: each must agree with eager.
NAMED = [
    "gpt2",
    "gpt_neox",
    "gptj",
    "bloom",
    "opt",
    "mpt",
    "codegen",
    "gpt_bigcode",
    "xglm",
    "olmo2",
    "olmo3",
    "exaone4",
    "apertus",
    "granitemoe",
    "llama4_text",
    "lfm2",
    "qwen3_next",
    "qwen3_5_text",
    "jamba",
    "falcon_h1",
    "granitemoehybrid",
    "recurrent_gemma",
    "minimax",
    "deepseek_v3",
    "longcat_flash",
    "gpt_oss",
]
HYBRIDS = ["qwen3_next", "qwen3_5_text", "jamba", "granitemoehybrid", "recurrent_gemma", "minimax", "lfm2"]


@pytest.fixture(scope="module")
def rows():
    return {r.model_type: r for r in sweep()}


def test_sweep_covers_the_mapping(rows):
    assert set(rows) == set(causal_lm_types()) and len(rows) > 150
    for r in rows.values():
        if r.status in ("skipped", "fails", "no_attention"):
            assert r.detail and "\n" not in r.detail, r  # one line that says why
        assert not r.detail.startswith("BUG"), r  # a raw exception escaped the probe


def test_probe_agrees_with_eager_on_95_percent(rows):
    tried = [r for r in rows.values() if r.status in ("agrees", "differs", "fails")]
    agree = [r for r in tried if r.status == "agrees"]
    bad = {r.model_type: r.detail for r in tried if r.status != "agrees"}
    assert len(agree) >= 0.95 * len(tried), bad
    for r in agree:
        assert r.max_diff is not None and r.max_diff <= ATOL


@pytest.mark.parametrize("model_type", NAMED)
def test_named_types_agree(rows, model_type):
    r = rows[model_type]
    assert r.status == "agrees", r


@pytest.mark.parametrize("model_type", HYBRIDS)
def test_hybrids_report_their_non_attention_layers(rows, model_type):
    kinds = rows[model_type].kinds.split(", ")
    assert "attention" in kinds and len(kinds) == 2, rows[model_type]


def test_pure_ssm_models_get_one_line():
    r = {x.model_type: x for x in sweep(["mamba"])}["mamba"]
    assert r.status == "no_attention" and r.detail.startswith("mamba: no attention to measure"), r
