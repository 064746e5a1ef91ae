"""`sinkhole quant` on the bundled SmolLM2 (small calibration so the file stays fast), and the CLI's errors."""

from __future__ import annotations

import json

import pytest

from sinkhole.cli.main import main


def test_cli_needs_backend_or_validate(capsys):
    assert main(["quant", "--model", "smollm2-135m"]) == 2
    assert "--backend" in capsys.readouterr().err


def test_cli_rejects_unknown_backend(capsys):
    assert main(["quant", "--backend", "gptq"]) == 2  # argparse's usage error, returned as exit code 2


@pytest.fixture(scope="module")
def smol_stats(smollm2):
    from sinkhole.quant.calibration import collect_stats
    from sinkhole.quant.texts import calibration_sequences

    calib = calibration_sequences(smollm2.tokenizer, n=2, length=64)
    return calib, collect_stats(smollm2, calib)


@pytest.mark.integration
def test_smollm2_outliers_sit_on_token0_down_proj(smollm2, smol_stats):
    _, stats = smol_stats
    hot = stats.hot_modules()
    assert hot and all(m.endswith("mlp.down_proj") for m in hot)
    top = max(stats.modules.values(), key=lambda s: s.absmax)
    assert top.kind == "down_proj"
    assert top.absmax > 100 * float(top.channel_absmax.median())
    assert set(top.outlier_positions) == {0}  # the spike token: whatever comes first
    # every calibration sequence's token 0 is an outlier there
    assert top.outlier_positions[0] == stats.n_sequences


@pytest.mark.integration
def test_smollm2_prefix_removes_outlier_tokens(smollm2, smol_stats):
    from sinkhole.quant.calibration import collect_stats
    from sinkhole.quant.hints import prefix_tokens

    calib, stats = smol_stats
    prefix = prefix_tokens(stats, smollm2.tokenizer)["token_ids"]
    assert prefix[0] == smollm2.tokenizer.bos_token_id
    after = collect_stats(smollm2, [prefix + s for s in calib], skip_positions=len(prefix))
    before_n = sum(s.n_outlier_tokens for s in stats.modules.values())
    after_n = sum(s.n_outlier_tokens for s in after.modules.values())
    assert after_n < before_n / 4
    hot = max(stats.modules, key=lambda n: stats.modules[n].absmax)  # the spike's down_proj
    assert after.modules[hot].absmax < stats.modules[hot].absmax / 10


@pytest.mark.integration
def test_cli_hints_and_validate(smollm2, tmp_path, capsys):
    from transformers import BitsAndBytesConfig

    out = tmp_path / "bnb.json"
    rc = main(
        [
            "quant",
            "--model",
            "smollm2-135m",
            "--backend",
            "bitsandbytes",
            "--hints",
            str(out),
            "--calib-seqs",
            "2",
            "--calib-len",
            "64",
        ]
    )
    assert rc == 0
    cfg = BitsAndBytesConfig.from_dict(json.loads(out.read_text()))
    assert "lm_head" in cfg.llm_int8_skip_modules and any("down_proj" in m for m in cfg.llm_int8_skip_modules)
    printed = capsys.readouterr().out
    assert "down_proj" in printed and "outlier tokens" in printed

    res = tmp_path / "val.json"
    rc = main(
        [
            "quant",
            "--model",
            "smollm2-135m",
            "--validate",
            "--alpha",
            "0.8",
            "--calib-seqs",
            "2",
            "--calib-len",
            "64",
            "--heldout-seqs",
            "1",
            "--heldout-len",
            "64",
            "--json",
            str(res),
        ]
    )
    assert rc == 0
    d = json.loads(res.read_text())
    ppl = {r["scheme"]: r["perplexity"] for r in d["results"]}
    assert {"float", "naive_static", "dynamic", "smoothquant", "prefix"} <= set(ppl)
    assert ppl["dynamic"] < ppl["naive_static"]  # per-token scales escape the spike token's range
    assert d["hints"]["alpha"] == 0.8
    assert "beats naive" in capsys.readouterr().out


@pytest.mark.integration
def test_cli_bad_alpha(capsys):
    assert (
        main(
            [
                "quant",
                "--model",
                "smollm2-135m",
                "--backend",
                "llm-compressor",
                "--alpha",
                "2",
                "--calib-seqs",
                "1",
                "--calib-len",
                "16",
            ]
        )
        == 2
    )
    assert "--alpha" in capsys.readouterr().err
