"""Probe cost on a GPU against a plain forward, side by side in one run (issue 10).

    python benchmarks/gpu.py                         # T = 4k 16k 32k 64k, one CUDA GPU, < 5 minutes
    python benchmarks/gpu.py --lengths 4096 32768 --repeats 5
    python benchmarks/gpu.py --device cpu --tiny     # smoke test of the script itself (tests run it)

Model: a randomly initialised Llama-3.2-1B-shaped LlamaForCausalLM (16 layers, d_model 2048,
32 query heads, 8 KV heads, d_head 64, FFN 8192, vocab 128256) in bfloat16, so nothing is
downloaded (random weights give the same attention work; the statistics are meaningless).
Modes, on one random token sequence of length T:
  plain - forward with SDPA, use_cache=False, logits_to_keep=1 (the cheapest forward)
  probe - sinkhole's ModelProbe.run (attention statistics by `choose_path`, residual hooks)
  eager - the original tool's approach: eager attention with output_attentions=True, only where
          its maps (layers x heads x T x T in bf16) fit in 80% of free GPU memory.
Time: median of --repeats forwards after one warm-up, each between torch.cuda.synchronize()
calls. Memory: torch.cuda.max_memory_allocated() during the timed forwards (weights included).
A second table times one layer's attention alone: SDPA against attention_with_stats on the
fused path (and the exact blocked path where it takes under a few seconds).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

LLAMA_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    tie_word_embeddings=True,
)
TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=4096,
)


class StubTokenizer:
    """The probe decodes token texts; random ids need no real tokenizer."""

    pad_token_id = 0
    chat_template = None

    def decode(self, ids):
        return f"<{ids[0]}>"


def build_model(device: str, tiny: bool, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**(TINY if tiny else LLAMA_1B))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise directly in the target dtype, on the target device
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.eval().requires_grad_(False)
    model.set_attn_implementation("sdpa")
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(step, device: str, repeats: int, budget_s: float) -> tuple[float, float | None]:
    """(median seconds, peak GB allocated or None on CPU) over `repeats` calls after a warm-up."""
    step()  # warm-up: kernels compile, allocator settles
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
        if sum(times) > budget_s:  # a slow mode (the exact path at 64k) must not eat the 5 minutes
            break
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else None
    return statistics.median(times), peak


def eager_fits(model, T: int, device: str) -> bool:
    cfg = model.config
    need = cfg.num_hidden_layers * cfg.num_attention_heads * T * T * 2 + cfg.num_attention_heads * T * T * 4
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return need < 0.8 * free
    return T <= 1024


def forward_table(model, lengths, device: str, repeats: int, budget_s: float) -> list[dict]:
    from sinkhole.probe.loading import LoadedModel
    from sinkhole.probe.probe import ModelProbe

    probe = ModelProbe(LoadedModel.wrap(model, StubTokenizer(), name="llama-1b-random"))
    gen = torch.Generator().manual_seed(0)
    rows = []
    for T in lengths:
        ids = torch.randint(1, model.config.vocab_size, (1, T), generator=gen)
        x, ids_list = ids.to(device), ids[0].tolist()
        row = {"T": T}
        with torch.inference_mode():
            row["plain"] = timed(
                lambda x=x: model(input_ids=x, use_cache=False, logits_to_keep=1), device, repeats, budget_s
            )
            row["probe"] = timed(lambda ids_list=ids_list: probe.run(ids_list), device, repeats, budget_s)
            if eager_fits(model, T, device):
                model.set_attn_implementation("eager")
                try:
                    row["eager"] = timed(
                        lambda x=x: model(
                            input_ids=x,
                            use_cache=False,
                            logits_to_keep=1,
                            output_attentions=True,
                            output_hidden_states=True,
                        ),
                        device,
                        repeats,
                        budget_s,
                    )
                finally:
                    model.set_attn_implementation("sdpa")
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    (a, ma), (b, mb) = row["plain"], row["probe"]
    gb = lambda m: f"{m:.2f}" if m is not None else "-"
    ratio = lambda x, y: f"{x / y:.2f}" if x is not None and y else "-"
    e = row.get("eager")
    eager = f"{e[0]:.3f} s, {gb(e[1])} GB" if e else "does not fit"
    return f"| {row['T']} | {a:.3f} | {b:.3f} | **{b / a:.2f}** | {gb(ma)} | {gb(mb)} | {ratio(mb, ma)} | {eager} |"


def attention_table(lengths, device: str, dtype, repeats: int, tiny: bool) -> None:
    """One layer's attention: SDPA vs attention_with_stats (fused, and exact while it is quick)."""
    from sinkhole.probe.attention import attention_with_stats, choose_path

    Hq, Hkv, D = (4, 2, 16) if tiny else (32, 8, 64)
    print("\n| T | SDPA ms | stats, fused ms | fused / SDPA | stats, exact ms | exact / SDPA |")
    print("|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(1)
    for T in lengths:
        q, k, v = (torch.randn(1, h, T, D, generator=gen).to(device=device, dtype=dtype) for h in (Hq, Hkv, Hkv))
        with torch.inference_mode():
            sdpa, _ = timed(
                lambda q=q, k=k, v=v: torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, is_causal=True, enable_gqa=True
                ),
                device,
                repeats,
                10.0,
            )
            fused = None
            if choose_path(q) == "fused":
                fused, _ = timed(
                    lambda q=q, k=k, v=v: attention_with_stats(q, k, v, None, D**-0.5, path="fused"),
                    device,
                    repeats,
                    10.0,
                )
            exact = None
            if T <= 32768:  # 577 ms at 32k on an H200 before this issue: still quick enough
                exact, _ = timed(
                    lambda q=q, k=k, v=v: attention_with_stats(q, k, v, None, D**-0.5, path="exact"),
                    device,
                    repeats,
                    10.0,
                )
        ms = lambda s: f"{s * 1e3:.1f}" if s is not None else "-"
        r = lambda s, sdpa=sdpa: f"{s / sdpa:.1f}" if s is not None else "-"
        print(f"| {T} | {ms(sdpa)} | {ms(fused)} | {r(fused)} | {ms(exact)} | {r(exact)} |", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=None, help="default 4096 16384 32768 65536")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model and short inputs (smoke test)")
    ap.add_argument("--budget", type=float, default=40.0, help="seconds of timed repeats per mode and T")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or use --device cpu --tiny for a smoke test")
    lengths = args.lengths or ([64, 160] if args.tiny else [4096, 16384, 32768, 65536])
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    import transformers

    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    print(
        f"# {card}; torch {torch.__version__}, transformers {transformers.__version__}, triton {triton_version}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; "
        f"python benchmarks/gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    t0 = time.perf_counter()
    model = build_model(args.device, args.tiny, dtype)
    from sinkhole.probe.attention import choose_path

    probe_q = torch.zeros(1, 1, 1, 8, device=args.device, dtype=dtype)
    print(f"# model built in {time.perf_counter() - t0:.1f} s; attention-statistics path here: {choose_path(probe_q)}")
    print(
        "\n| T | plain s | probe s | probe / plain | plain GB | probe GB | memory probe / plain "
        "| eager (output_attentions) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    forward_table(model, lengths, args.device, args.repeats, args.budget)
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    attention_table([t for t in lengths if t <= 32768] or lengths[:1], args.device, dtype, args.repeats, args.tiny)
    print(f"\n# total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
