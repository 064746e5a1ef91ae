"""Chunked-prefill speed of HeadAwareSinkCache against dense attention (DynamicCache), side by side.

A random-weight Llama shaped like SmolLM2-135M (hidden 576, 9 query heads, 3 KV heads, head dim 64;
fewer layers by default: the cost per layer is what matters and the weights do not change it) reads
`--tokens` tokens in chunks of `--chunk` (as `sinkhole kv-bench` prefills), batch 1 and 5. The
head-aware cache keeps ~45% of KV heads whole (Grow) and streams the rest through 4 sinks + 32
local sinks + a 224-token window (LocalSinkRing), the shape kv-bench's head-aware cell has on
SmolLM2. Rounds alternate the order of the caches, and each ratio is the median of per-round ratios
(cache / dense in the same round), so load on a shared machine hits all of them.

    python benchmarks/head_aware_speed.py                    # 1024 and 2048 tokens, batch 1 and 5
    python benchmarks/head_aware_speed.py --threads 1 2      # each thread count in turn
    python benchmarks/head_aware_speed.py --tokens 2048 --batch 5 --profile   # where the time goes

Why thread counts matter here: on a CPU shared with other jobs, each parallel torch op waits at its
barrier for a descheduled thread (BENCHMARKS.md, "CPU threads"), so a cache's time follows the
number of ops it issues per layer more than its arithmetic.

Results: BENCHMARKS.md, "Head-aware chunked prefill".
"""

from __future__ import annotations

import argparse
import contextlib
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
    threads: int
    seconds: dict[str, float]  # per cache: median seconds per prefill
    ratio: dict[str, float]  # per cache: median over rounds of its time / dense's in the same round


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


def head_aware_cache(model, tokens: int, cls=HeadAwareSinkCache):
    layers = model.config.num_hidden_layers
    return cls(retrieval_heads(layers), 4, 224, model=model, local_sinks=32, length=tokens)


# name -> (cache for `tokens` tokens, attention context): what a round times, in order
KINDS = {
    "dense": (lambda model, tokens: DynamicCache(config=model.config), lambda model: contextlib.nullcontext()),
    "head_aware": (head_aware_cache, head_aware_attention),
}


@torch.inference_mode()
def prefill(model, kind: str, ids: torch.Tensor, chunk: int) -> tuple[float, torch.Tensor]:
    """Seconds to feed ids in chunks through a fresh cache of `kind`, and the last logits."""
    make, context = KINDS[kind]
    cache = make(model, ids.shape[1])
    t0 = time.perf_counter()
    with context(model):
        for s in range(0, ids.shape[1], chunk):
            logits = model(ids[:, s : s + chunk], cache=cache, use_cache=True, logits_to_keep=1).logits
    return time.perf_counter() - t0, logits[:, -1].float()


def measure(model, tokens: int, batch: int, chunk: int, rounds: int) -> Row:
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(1))
    for kind in KINDS:  # warm-up
        prefill(model, kind, ids[:, : 2 * chunk], chunk)
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for r in range(rounds):
        order = list(KINDS) if r % 2 == 0 else list(reversed(KINDS))
        for kind in order:
            times[kind].append(prefill(model, kind, ids, chunk)[0])
    dense = times["dense"]
    return Row(
        tokens,
        batch,
        torch.get_num_threads(),
        {kind: statistics.median(t) for kind, t in times.items()},
        {kind: statistics.median(a / d for a, d in zip(t, dense)) for kind, t in times.items() if kind != "dense"},
    )


def profile(model, tokens: int, batch: int, chunk: int, top: int) -> None:
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(1))
    for kind in KINDS:
        prefill(model, kind, ids[:, : 2 * chunk], chunk)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            prefill(model, kind, ids, chunk)
        ops = sum(e.count for e in prof.key_averages())
        print(f"== {kind}: {ops} torch ops; by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def main(argv=None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8, help="SmolLM2-135M has 30; the ratio does not depend on it")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--profile", action="store_true", help="profile one prefill of each cache instead of timing")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    model = tiny_smollm(args.layers)
    others = [k for k in KINDS if k != "dense"]
    print(f"{args.layers} layers, chunk {args.chunk}, {args.rounds} rounds; ratio = cache / dense, same round")
    head = " ".join(f"{k + ' s':>13} {'ratio':>6}" for k in others)
    print(f"{'threads':>7} {'tokens':>6} {'batch':>5} {'dense s':>8} {head}")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for tokens in args.tokens:
            for batch in args.batch:
                if args.profile:
                    profile(model, tokens, batch, args.chunk, args.top)
                    continue
                r = measure(model, tokens, batch, args.chunk, args.rounds)
                rows.append(r)
                cells = " ".join(f"{r.seconds[k]:>13.3f} {r.ratio[k]:>5.2f}x" for k in others)
                print(f"{threads:>7} {tokens:>6} {batch:>5} {r.seconds['dense']:>8.3f} {cells}", flush=True)
    return rows


if __name__ == "__main__":
    main()
