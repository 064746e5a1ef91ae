"""benchmarks/gpu.py cannot run here (no GPU): check its parts that can, so that it runs there."""

import torch
from conftest import benchmark_script


def load():
    return benchmark_script("gpu")


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
