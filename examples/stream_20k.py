"""Stream 20,000 tokens through SmolLM2-135M (trained context 8192) with a 512-slot sink cache.

The text (Python's own documentation) is fed one token at a time, as in StreamingLLM's
evaluation; every --every tokens the script prints the perplexity of the last block, the
process's resident memory and the cache's own size, which stay flat however far the stream goes.

    python examples/stream_20k.py                       # 20,000 tokens
    python examples/stream_20k.py --tokens 3000 --every 500

Token-by-token decoding of a 135M model on CPU: 20,000 tokens took ~25 min (6-16 tokens/s) on a
shared 2-core machine, one thread; RSS stayed at 980 MiB and the cache at 22.7 MiB throughout
(benchmarks/results/cache.md).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time

import torch

from sinkhole.cache.sink_cache import SinkCache, cache_nbytes
from sinkhole.cache.stream_ppl import default_text, encode_stream
from sinkhole.probe.loading import load_model


def rss_mib() -> float:
    """Current resident set size (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cache_mib(cache) -> float:
    return cache_nbytes(cache) / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--cache", type=int, default=512, help="keys per layer, sinks included")
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--every", type=int, default=1000, help="print a line every N tokens")
    args = ap.parse_args()

    lm = load_model("smollm2-135m", log=lambda m: print(m, file=sys.stderr))
    text, _ = default_text()
    ids = encode_stream(lm.tokenizer, text, args.tokens + 1)
    cache = SinkCache(args.sinks, args.cache - args.sinks, model=lm.model)
    print(
        f"streaming {args.tokens} tokens through {lm.name} (context {lm.max_context}), "
        f"{args.sinks} sinks + {args.cache - args.sinks} recent",
        flush=True,
    )
    print(f"{'tokens':>7} {'ppl(block)':>10} {'RSS MiB':>8} {'cache MiB':>9} {'tok/s':>6}", flush=True)
    nll, t0 = 0.0, time.perf_counter()
    with torch.inference_mode():
        for t in range(args.tokens):
            logits = lm.model(ids[:, t : t + 1], cache=cache, use_cache=True).logits[0, -1]
            nll += torch.nn.functional.cross_entropy(logits.float()[None], ids[0, t + 1 : t + 2]).item()
            if (t + 1) % args.every == 0 or t + 1 == args.tokens:
                n = (t % args.every) + 1
                rate = n / (time.perf_counter() - t0)
                print(
                    f"{t + 1:>7} {math.exp(nll / n):>10.2f} {rss_mib():>8.0f} {cache_mib(cache):>9.1f} {rate:>6.1f}",
                    flush=True,
                )
                nll, t0 = 0.0, time.perf_counter()
    return 0


if __name__ == "__main__":
    sys.exit(main())
