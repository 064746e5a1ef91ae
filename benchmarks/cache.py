"""SinkCache speed and memory, measured side by side (results: benchmarks/results/cache.md).

1. decode: tokens/s of SinkCache and HeadAwareSinkCache against transformers' DynamicCache, each
   attending to L keys per step (DynamicCache prefilled to L - 1; SinkCache full at L = sinks +
   window; head-aware with every head in full, with half the heads at L / 4, and with every head
   streaming through sinks + 32 local sinks + window = L). Rounds alternate
   the caches, and each ratio is the median of per-round ratios, so load drifts hit all of them.
2. memory: bytes held by the cache's tensors (exact) and process RSS as a stream grows, for
   SinkCache and DynamicCache. On the real model up to --mem-tokens; on a tiny random Llama
   (the cache's behaviour does not depend on the weights) up to 32k tokens.
3. latency: one decode step through a full SinkCache against sliding window with recomputation
   (a fresh forward over the last L tokens for each new token), median over rounds.

    OMP_NUM_THREADS=1 python benchmarks/cache.py                 # ~10 min on a quiet 2-core CPU
    python benchmarks/cache.py --quick
    OMP_NUM_THREADS=1 python benchmarks/cache.py --only decode   # the decode table alone, CPU float32
    python benchmarks/cache.py --device cuda --json cache-gpu.json
        # one GPU, bfloat16: decode at L = 256, 1024, 4096 (300 steps x 3 rounds each) and the
        # recompute latency; a few minutes on an H100. Without CUDA it stops with a one-line error.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from transformers import DynamicCache

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from sinkhole.cache.head_aware import HeadAwareSinkCache, head_aware_attention, kv_head_count  # noqa: E402
from sinkhole.cache.sink_cache import SinkCache, cache_nbytes  # noqa: E402
from sinkhole.cache.stream_ppl import default_text, encode_stream  # noqa: E402
from sinkhole.probe.loading import load_model  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def decode_rate(model, cache, ids, start: int, steps: int) -> float:
    """Tokens/s of `steps` single-token forwards through `cache` (timed after a device sync)."""
    with head_aware_attention(model):  # only changes anything for HeadAwareSinkCache
        sync(ids.device)
        t0 = time.perf_counter()
        for t in range(start, start + steps):
            model(ids[:, t : t + 1], cache=cache, use_cache=True)
        sync(ids.device)
    return steps / (time.perf_counter() - t0)


def decode_caches(model, length: int, sinks: int = 4) -> dict:
    """Cache factories that attend to the same number of keys (`length`) in every decode step:
    DynamicCache prefilled to length - 1, SinkCache full (sinks + window = length), and the
    head-aware cache with every head in full (its attention path and storage, no eviction) and with
    half of each layer's KV heads streaming (sinks + window = length / 4) and the rest in full, and
    with every head streaming through sinks + 32 local sinks + window (= length)."""
    from sinkhole.profiles.stream_scores import layer_kinds

    H = kv_head_count(model)
    L = len(layer_kinds(model)[0])
    return {
        "dynamic": lambda: DynamicCache(config=model.config),
        "sink": lambda: SinkCache(sinks, length - sinks, model=model),
        "head_aware_full": lambda: HeadAwareSinkCache([list(range(H))] * L, sinks, length - sinks, model=model),
        "head_aware_half": lambda: HeadAwareSinkCache(
            [list(range(H // 2))] * L, sinks, length // 4 - sinks, model=model
        ),
        # every head streaming with 32 local sinks (explicit probabilities, a promotion per step)
        "head_aware_local": lambda: HeadAwareSinkCache(
            [[]] * L, sinks, length - sinks - 32, model=model, local_sinks=32
        ),
    }


@torch.inference_mode()
def bench_decode(model, ids, length: int, steps: int, rounds: int, sinks: int = 4) -> dict:
    """Decode tokens/s per cache; rounds alternate the caches, ratios to DynamicCache are medians of
    per-round ratios (a shared machine's load drifts hit every cache)."""
    makers = decode_caches(model, length, sinks)
    rates: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(rounds):
        for name, make in makers.items():
            cache = make()
            with head_aware_attention(model):
                model(ids[:, : length - 1], cache=cache, use_cache=True)
            rates[name].append(decode_rate(model, cache, ids, length - 1, steps))
            del cache
    row = dict(cache_len=length, steps=steps, rounds=rounds)
    for name, r in rates.items():
        row[f"{name}_tok_s"] = round(statistics.median(r), 2)
        if name != "dynamic":
            row[f"{name}_ratio"] = round(statistics.median(a / b for a, b in zip(r, rates["dynamic"])), 3)
    return row


@torch.inference_mode()
def bench_memory(model, ids, checkpoints: list[int], cache_len: int, sinks: int = 4) -> list[dict]:
    rows = []
    for kind in ("sink", "dynamic"):
        cache = (
            SinkCache(sinks, cache_len - sinks, model=model) if kind == "sink" else DynamicCache(config=model.config)
        )
        t0 = time.perf_counter()
        for t in range(max(checkpoints)):
            model(ids[:, t : t + 1], cache=cache, use_cache=True)
            if t + 1 in checkpoints:
                rows.append(
                    dict(
                        cache=kind,
                        tokens=t + 1,
                        cache_mib=round(cache_nbytes(cache) / 2**20, 2),
                        rss_mib=round(rss_mib()),
                        tok_s=round((t + 1) / (time.perf_counter() - t0), 1),
                    )
                )
                print(
                    f"  memory {kind:<8} {t + 1:>6} tokens: cache {rows[-1]['cache_mib']} MiB, "
                    f"RSS {rows[-1]['rss_mib']} MiB",
                    file=sys.stderr,
                    flush=True,
                )
        del cache
    return rows


@torch.inference_mode()
def bench_latency(model, ids, length: int, rounds: int, sinks: int = 4) -> dict:
    sink = SinkCache(sinks, length - sinks, model=model)
    model(ids[:, :length], cache=sink, use_cache=True)
    step, recompute = [], []
    for r in range(rounds):
        t = length + r
        sync(ids.device)
        t0 = time.perf_counter()
        model(ids[:, t : t + 1], cache=sink, use_cache=True)
        sync(ids.device)
        step.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        model(ids[:, t + 1 - length : t + 1])
        sync(ids.device)
        recompute.append(time.perf_counter() - t0)
    s, rc = statistics.median(step), statistics.median(recompute)
    return dict(
        cache_len=length,
        rounds=rounds,
        sink_ms=round(1000 * s, 1),
        recompute_ms=round(1000 * rc, 1),
        speedup=round(rc / s, 1),
    )


@torch.inference_mode()
def bench_numerics(lm, ids, checkpoints: list[int], cache_len: int = 64, sinks: int = 4) -> list[dict]:
    """Max |logit diff| between SinkCache streaming and full recomputation as the stream grows.

    The model is cut to its first decoder layer (real weights, final norm and head kept): with one
    layer a token's keys and values depend only on the token and its position, so recomputing the
    model from scratch on [sinks + window] at positions 0..n-1 is an exact reference and any
    difference is numerical: the float32 RoPE angles at large absolute positions plus the sinks'
    re-rotation. Restores the model's layers afterwards.
    """
    model = lm.model
    layers = model.model.layers
    model.model.layers = layers[:1]  # the cache still has a layer per config layer; only layer 0 is used
    rows = []
    try:
        cache = SinkCache(sinks, cache_len - sinks, model=model)
        window = cache_len - sinks
        t0 = time.perf_counter()
        for t in range(max(checkpoints)):
            logits = model(ids[:, t : t + 1], cache=cache, use_cache=True).logits[0, -1]
            if t + 1 in checkpoints:
                keep = list(range(sinks)) + list(range(t + 1 - window, t + 1))
                ref = model(ids[:, keep]).logits[0, -1]
                rows.append(
                    dict(
                        position=t,
                        max_abs_diff=float((logits - ref).abs().max()),
                        max_abs_logit=float(ref.abs().max()),
                        same_top1=bool(logits.argmax() == ref.argmax()),
                        seconds=round(time.perf_counter() - t0, 1),
                    )
                )
                print(f"  numerics t={t}: {rows[-1]}", file=sys.stderr, flush=True)
    finally:
        model.model.layers = layers
    return rows


@torch.inference_mode()
def bench_rope_offset(lm, ids, offsets: list[int], length: int = 64) -> list[dict]:
    """The model's own float32 RoPE error, no cache involved: the first-layer model on the same
    `length` tokens at positions offset..offset+length-1 against 0..length-1 (RoPE makes them
    equal in exact arithmetic). Attributes the `bench_numerics` differences."""
    model = lm.model
    layers = model.model.layers
    model.model.layers = layers[:1]
    try:
        window = ids[:, :length]
        ref = model(window, position_ids=torch.arange(length)[None]).logits[0, -1]
        rows = []
        for p in offsets:
            out = model(window, position_ids=torch.arange(p, p + length)[None]).logits[0, -1]
            rows.append(dict(offset=p, max_abs_diff=float((out - ref).abs().max())))
    finally:
        model.model.layers = layers
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--quick", action="store_true", help="fewer rounds and tokens")
    ap.add_argument("--mem-tokens", type=int, default=1024, help="tokens streamed through the real model (0 skips it)")
    ap.add_argument(
        "--numerics-tokens",
        type=int,
        default=32768,
        help="stream length for the one-layer numerics check (0 skips it)",
    )
    ap.add_argument("--only", choices=["decode", "latency", "memory", "numerics"], help="run one part")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda: decode and latency only, bfloat16")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.device.startswith("cuda"):
        return main_cuda(args)
    lm = load_model(args.model, log=lambda m: print(m, file=sys.stderr))
    text, _ = default_text()
    ids = encode_stream(lm.tokenizer, text, max(args.mem_tokens, 4096, args.numerics_tokens) + 1)
    rounds = 2 if args.quick else 5
    out = dict(
        model=lm.name,
        threads=torch.get_num_threads(),
        decode=[],
        latency=[],
        memory_real=[],
        memory_tiny=[],
        numerics=[],
        rope_offset=[],
    )
    part = lambda name: args.only in (None, name)
    if part("numerics") and args.numerics_tokens:
        marks = [m for m in (256, 1024, 4096, 8192, 16384, 32768, 65536) if m < args.numerics_tokens]
        out["numerics"] = bench_numerics(lm, ids, marks + [args.numerics_tokens])
    if part("numerics"):
        out["rope_offset"] = bench_rope_offset(lm, ids, [1024, 4096, 8192, 16384, 32704])
    for length in (256, 1024) if part("decode") else ():
        row = bench_decode(lm.model, ids, length, steps=16 if args.quick else 64, rounds=rounds)
        print(f"decode L={length}: {row}", file=sys.stderr, flush=True)
        out["decode"].append(row)
    for length in (256, 512, 1024) if part("latency") else ():
        row = bench_latency(lm.model, ids, length, rounds=4 if args.quick else 8)
        print(f"latency L={length}: {row}", file=sys.stderr, flush=True)
        out["latency"].append(row)
    if not part("memory"):
        return finish(out, args.json)
    if args.mem_tokens:
        marks = sorted({m for m in (512, 1024, 2048, 8192, 32768) if m <= args.mem_tokens} | {args.mem_tokens})
        out["memory_real"] = bench_memory(lm.model, ids, marks, cache_len=512)
    from conftest import tiny_llama

    tiny = tiny_llama(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=65536)
    tiny_ids = torch.randint(1, 99, (1, 32769), generator=torch.Generator().manual_seed(0))
    tiny_marks = [2048, 8192] if args.quick else [2048, 8192, 32768]
    out["memory_tiny"] = bench_memory(tiny, tiny_ids, tiny_marks, cache_len=512)
    return finish(out, args.json)


def main_cuda(args) -> int:
    """GPU mode: decode rates (the number the issue compares: 0.67x on an H200 before the ring buffer)
    and the recompute latency, in bfloat16, sized for a few minutes on one GPU."""
    if not torch.cuda.is_available():
        print(
            f"--device {args.device}: CUDA is not available on this machine (torch {torch.__version__})",
            file=sys.stderr,
        )
        return 2
    lm = load_model(args.model, device=args.device, dtype="bfloat16", log=lambda m: print(m, file=sys.stderr))
    text, _ = default_text()
    ids = encode_stream(lm.tokenizer, text, 4096 + 400).to(lm.device)
    out = dict(model=lm.name, device=torch.cuda.get_device_name(lm.device), dtype="bfloat16", decode=[], latency=[])
    steps, rounds = (60, 2) if args.quick else (300, 3)
    for length in (256, 1024, 4096) if args.only in (None, "decode") else ():
        row = bench_decode(lm.model, ids, length, steps=steps, rounds=rounds)
        print(f"decode L={length}: {row}", file=sys.stderr, flush=True)
        out["decode"].append(row)
    for length in (256, 1024) if args.only in (None, "latency") else ():
        row = bench_latency(lm.model, ids, length, rounds=20)
        print(f"latency L={length}: {row}", file=sys.stderr, flush=True)
        out["latency"].append(row)
    return finish(out, args.json)


def finish(out: dict, path: str | None) -> int:
    print(json.dumps(out, indent=1))
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
