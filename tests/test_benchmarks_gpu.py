"""benchmarks/gpu.py cannot run here (no GPU): check its parts that can, so that it runs there."""

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def load():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_model_is_llama_3_2_1b_shaped():
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**load().LLAMA_1B))
    assert sum(p.numel() for p in model.parameters()) == 1_235_814_400  # Llama-3.2-1B's count
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (16, 32, 8, 64)


def test_smoke_run_on_cpu_prints_both_tables(capsys):
    load().main(["--device", "cpu", "--tiny", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 64 |") or line.startswith("| 160 |")]
    assert len(rows) == 4, out  # two lengths x (forward table, attention table)
    assert "attention-statistics path here: exact" in out  # a CPU never picks the Triton path
