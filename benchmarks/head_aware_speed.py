"""Chunked-prefill speed of HeadAwareSinkCache against dense attention (DynamicCache), side by side.

A random-weight Llama shaped like SmolLM2-135M (hidden 576, 9 query heads, 3 KV heads, head dim 64;
fewer layers by default: the cost per layer is what matters and the weights do not change it) reads
`--tokens` tokens in chunks of `--chunk` (as `sinkhole kv-bench` prefills), batch 1 and 5. The
head-aware cache keeps ~45% of KV heads whole (Grow) and streams the rest through 4 sinks + 32
local sinks + a 224-token window (LocalSinkRing), the shape kv-bench's head-aware cell has on
SmolLM2. Rounds alternate dense and head-aware, and the ratio is the median of per-round ratios, so
load on a shared machine hits both.

    OMP_NUM_THREADS=2 python benchmarks/head_aware_speed.py                  # 1024 and 2048, batch 1 and 5
    python benchmarks/head_aware_speed.py --tokens 2048 --batch 5 --profile  # where head-aware's time goes
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from sinkhole.cache.head_aware import HeadAwareSinkCache, head_aware_attention


@dataclass
class Row:
    tokens: int
    batch: int
    dense_s: float  # median seconds per prefill
    head_aware_s: float
    ratio: float  # median over rounds of head-aware / dense in the same round


def tiny_smollm(layers: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=4096,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("sdpa")
    return model


def retrieval_heads(layers: int, kv_heads: int = 3, share: float = 0.45) -> list[list[int]]:
    """A fixed spread of retrieval heads, `share` of all KV heads (kv-bench picks ~41 of 90 on SmolLM2)."""
    picked = round(share * layers * kv_heads)
    flat = [(i * 7) % (layers * kv_heads) for i in range(layers * kv_heads)][:picked]
    return [sorted(h % kv_heads for h in flat if h // kv_heads == layer) for layer in range(layers)]


def make_cache(kind: str, model, tokens: int):
    if kind == "dense":
        return DynamicCache(config=model.config)
    layers = model.config.num_hidden_layers
    return HeadAwareSinkCache(retrieval_heads(layers), 4, 224, model=model, local_sinks=32, length=tokens)


@torch.inference_mode()
def prefill(model, cache, ids: torch.Tensor, chunk: int) -> torch.Tensor:
    with head_aware_attention(model):
        for s in range(0, ids.shape[1], chunk):
            logits = model(ids[:, s : s + chunk], cache=cache, use_cache=True, logits_to_keep=1).logits
    return logits[:, -1].float()


def timed(model, kind: str, ids: torch.Tensor, chunk: int) -> float:
    cache = make_cache(kind, model, ids.shape[1])
    t0 = time.perf_counter()
    prefill(model, cache, ids, chunk)
    return time.perf_counter() - t0


def measure(model, tokens: int, batch: int, chunk: int, rounds: int) -> Row:
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(1))
    for kind in ("dense", "head_aware"):  # warm-up
        timed(model, kind, ids[:, : 2 * chunk], chunk)
    dense, ha = [], []
    for r in range(rounds):
        order = ("dense", "head_aware") if r % 2 == 0 else ("head_aware", "dense")
        t = {kind: timed(model, kind, ids, chunk) for kind in order}
        dense.append(t["dense"]), ha.append(t["head_aware"])
    ratio = statistics.median(h / d for h, d in zip(ha, dense))
    return Row(tokens, batch, statistics.median(dense), statistics.median(ha), ratio)


def profile(model, tokens: int, batch: int, chunk: int, top: int) -> None:
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(1))
    timed(model, "head_aware", ids[:, : 2 * chunk], chunk)
    for kind in ("dense", "head_aware"):
        cache = make_cache(kind, model, tokens)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            prefill(model, cache, ids, chunk)
        print(f"== {kind}: torch ops by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
    cache = make_cache("head_aware", model, tokens)
    pr = cProfile.Profile()
    pr.runcall(prefill, model, cache, ids, chunk)
    print("== head_aware: Python functions by cumulative time")
    pstats.Stats(pr).sort_stats("cumulative").print_stats(top)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8, help="SmolLM2-135M has 30; the ratio does not depend on it")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="profile one head-aware prefill instead of timing")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    model = tiny_smollm(args.layers)
    print(f"threads {torch.get_num_threads()}, {args.layers} layers, chunk {args.chunk}, rounds {args.rounds}")
    if args.profile:
        for tokens in args.tokens:
            for batch in args.batch:
                profile(model, tokens, batch, args.chunk, args.top)
        return
    print(f"{'tokens':>6} {'batch':>5} {'dense s':>8} {'head-aware s':>12} {'ratio':>6}")
    for tokens in args.tokens:
        for batch in args.batch:
            r = measure(model, tokens, batch, args.chunk, args.rounds)
            print(f"{r.tokens:>6} {r.batch:>5} {r.dense_s:>8.3f} {r.head_aware_s:>12.3f} {r.ratio:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
