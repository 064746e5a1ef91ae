"""SinkAwareLLM (sinks + window inside vLLM) against vLLM dense, on vLLM itself (.venv-vllm).

One long generation per engine, at a KV budget of --budget tokens for the bounded ones:
    dense          vllm.LLM, every token kept
    sinks+window   SinkAwareLLM(n_sink=4, window=budget - 4)
    window-only    SinkAwareLLM(n_sink=0, window=budget)  (sliding window, no sinks)
For each: decode tokens/s (decode steps only, timed one by one; the prefill step is left out), KV
blocks in use after every step (read from the in-process scheduler's block pool), the
perplexity of its generated continuation scored by the dense model (prompt logprobs of prompt +
continuation), and the perplexity of the first --tokens tokens of a fixed text (Python's docs)
under its own attention (prompt logprobs of that engine: StreamingLLM's teacher-forced test).
Sampling is seeded (temperature 0.8, top-p 0.95): greedy decoding of a small model
loops, which a dense scorer finds very likely whatever produced it. Engines run one after
another in one process; dense runs first and last and its speed is the mean of the two, so slow
drift of the machine's load hits both sides.

    VLLM_CPU_KVCACHE_SPACE=1 flock -x /tmp/coord/cpu.lock .venv-vllm/bin/python benchmarks/vllm.py
    .venv-vllm/bin/python benchmarks/vllm.py --tokens 512 --budget 128      # a quick look

--prefix-cache measures issue 28's item 2 instead (no timing): the prefix-cache hit rate of a
request stream under memory pressure, for vLLM dense (vLLM's LRU), SinkAwareLLM with
pin_sink_blocks=0 (vLLM's LRU on the sink engine) and SinkAwareLLM with its sink blocks pinned,
each on a --pool-block cache with prefix caching on. The stream (seeded, token ids): --requests
requests in batches of --batch; a --share of them share one of --systems one-block system prompts
followed by 16-48 tokens of their own, the others are distinct prompts of 128-224 tokens. Every
engine sees the same stream. The pool is small so that the distinct traffic between two uses of a
system prompt (about (--systems / --share) requests) outgrows it: the memory pressure.

    flock -s /tmp/coord/cpu.lock .venv-vllm/bin/python benchmarks/vllm.py --prefix-cache
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
# This file is named vllm.py: run as a script, its folder comes first on sys.path and would hide vLLM.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

PROMPT = (
    "Chapter 1. The harbour town of Elsmere had stood at the mouth of the river for six hundred years. "
    "Its people were fishermen and boat builders, and the stories they told were about the sea."
)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens generated per engine")
    ap.add_argument("--budget", type=int, default=512, help="KV tokens per request for the bounded engines")
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--n-sink", type=int, default=4)
    ap.add_argument("--only", choices=["dense", "sinks+window", "window-only"], action="append")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--no-scorer", action="store_true", help="skip scoring the generations with dense")
    pc = ap.add_argument_group("--prefix-cache: hit rate under memory pressure")
    pc.add_argument("--prefix-cache", action="store_true")
    pc.add_argument("--pool", type=int, default=40, help="KV blocks in the cache")
    pc.add_argument("--requests", type=int, default=160)
    pc.add_argument("--batch", type=int, default=4, help="requests submitted together")
    pc.add_argument("--systems", type=int, default=4, help="distinct shared system prompts (one block each)")
    pc.add_argument("--share", type=float, default=0.25, help="fraction of requests with a system prompt")
    pc.add_argument("--window", type=int, default=64, help="window of the sink engines")
    return ap.parse_args(argv)


def engine(kind: str, args, model_dir: str):
    from vllm import LLM

    from sinkhole.vllm import SinkAwareLLM

    kw = dict(
        dtype="float32",
        enforce_eager=True,
        block_size=args.block_size,
        max_model_len=args.tokens + 512,
        seed=0,
        enable_prefix_caching=False,
    )
    if kind == "dense":
        return LLM(model=model_dir, **kw)
    kw.pop("enable_prefix_caching")
    if kind == "sinks+window":
        return SinkAwareLLM(model=model_dir, n_sink=args.n_sink, window=args.budget - args.n_sink, **kw)
    return SinkAwareLLM(model=model_dir, n_sink=0, window=args.budget, **kw)


def shutdown(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def run(llm, args) -> dict:
    """One generation, step by step: per-step seconds and KV blocks in use."""
    from vllm import SamplingParams

    from sinkhole.vllm import kv_blocks_in_use

    llm.generate(["warm up"], SamplingParams(max_tokens=8), use_tqdm=False)
    sp = SamplingParams(temperature=0.8, top_p=0.95, seed=0, max_tokens=args.tokens, ignore_eos=True)
    eng = llm.llm_engine
    eng.add_request("bench", PROMPT, sp)
    times, blocks, out = [], [], None
    while eng.has_unfinished_requests():
        t = time.perf_counter()
        for o in eng.step():
            out = o if o.finished else out
        times.append(time.perf_counter() - t)
        if out is None:
            blocks.append(kv_blocks_in_use(llm))
        if len(times) % 256 == 0:
            print(f"  {len(times)} steps, {blocks[-1]} blocks", file=sys.stderr, flush=True)
    decode = times[1:]  # step 0 is the prefill
    text = reference_ids(llm, args.tokens)
    return dict(
        text_ppl=dense_ppl(llm, text[:1], text[1:]),  # this engine's own attention, teacher-forced
        tok_s=len(decode) / sum(decode),
        blocks=blocks,
        prompt_ids=list(out.prompt_token_ids),
        tokens=list(out.outputs[0].token_ids),
    )


def reference_ids(llm, n: int) -> list[int]:
    """The first n tokens of Python's documentation (sinkhole's long reference text)."""
    from sinkhole.cache.stream_ppl import default_text

    ids = llm.get_tokenizer()(default_text()[0]).input_ids[:n]
    if len(ids) < n:
        raise SystemExit(f"the reference text has only {len(ids)} tokens")
    return ids


def dense_ppl(llm, prompt_ids: list[int], tokens: list[int]) -> float:
    """Perplexity of `tokens` after `prompt_ids` under the engine `llm` (prompt logprobs: one
    prefill, in which a SinkAwareLLM query sees its sinks + window, StreamingLLM teacher-forced)."""
    from vllm import SamplingParams

    ids = prompt_ids + tokens
    out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    nll = [-out.prompt_logprobs[i][ids[i]].logprob for i in range(len(prompt_ids), len(ids))]
    return math.exp(statistics.fmean(nll))


def stream(args) -> list[tuple[int, list[int]]]:
    """The request stream: (system prompt index or -1 for a distinct prompt, token ids)."""
    import random

    rng = random.Random(0)
    systems = [[rng.randrange(100, 40000) for _ in range(args.block_size)] for _ in range(args.systems)]
    out = []
    for _ in range(args.requests):
        if rng.random() < args.share:
            k = rng.randrange(args.systems)
            out.append((k, systems[k] + [rng.randrange(100, 40000) for _ in range(rng.randint(16, 48))]))
        else:
            out.append((-1, [rng.randrange(100, 40000) for _ in range(rng.randint(128, 224))]))
    return out


def prefix_cache(args, model_dir: str) -> None:
    """Hit rates of the same request stream on three engines (module doc)."""
    from vllm import LLM, SamplingParams

    from sinkhole.vllm import SinkAwareLLM, pinned_sink_blocks

    kw = dict(
        dtype="float32",
        enforce_eager=True,
        block_size=args.block_size,
        max_model_len=256,
        seed=0,
        enable_prefix_caching=True,
        num_gpu_blocks_override=args.pool,
    )
    engines = {
        "vLLM dense (LRU)": lambda: LLM(model=model_dir, **kw),
        "sinks+window, pin_sink_blocks=0 (LRU)": lambda: SinkAwareLLM(
            model=model_dir, n_sink=args.n_sink, window=args.window, pin_sink_blocks=0, **kw
        ),
        "sinks+window, sink blocks pinned": lambda: SinkAwareLLM(
            model=model_dir, n_sink=args.n_sink, window=args.window, **kw
        ),
    }
    reqs = stream(args)
    sp = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    rows = {}
    for name, make in engines.items():
        print(f"{name}: starting the engine", file=sys.stderr, flush=True)
        llm = make()
        cached = []
        for b in range(0, len(reqs), args.batch):
            batch = reqs[b : b + args.batch]
            outs = llm.generate([{"prompt_token_ids": ids} for _, ids in batch], sp, use_tqdm=False)
            cached += [o.num_cached_tokens for o in outs]
        pins = pinned_sink_blocks(llm) if name.startswith("sinks") else []
        shutdown(llm)
        shared = [(c, len(ids)) for c, (k, ids) in zip(cached, reqs) if k >= 0]
        rows[name] = dict(
            sharers_hit=sum(c >= args.block_size for c, _ in shared) / len(shared),
            sharer_tokens=sum(c for c, _ in shared) / sum(n for _, n in shared),
            all_tokens=sum(cached) / sum(len(ids) for _, ids in reqs),
            pins=len(pins),
        )
        print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
    n_shared = sum(k >= 0 for k, _ in reqs)
    print(
        f"\n{args.model}, {args.requests} requests ({n_shared} share one of {args.systems} one-block system "
        f"prompts) in batches of {args.batch}, {args.pool}-block cache of {args.block_size}-token blocks"
    )
    print(
        "| engine | sharing requests that hit their system block | prefix-cache hit rate, sharing requests "
        "| hit rate, all prompt tokens | sink blocks pinned at the end |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['sharers_hit']:.0%} | {r['sharer_tokens']:.1%} | {r['all_tokens']:.1%} | {r['pins']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), rows=rows), f, indent=1)


def main(argv=None) -> None:
    args = parse(argv)
    from sinkhole.vllm.settings import model_path

    model_dir = model_path(args.model)[0]
    if args.prefix_cache:
        return prefix_cache(args, model_dir)
    kinds = args.only or ["dense", "sinks+window", "window-only", "dense"]
    results: dict[str, list[dict]] = {}
    for kind in kinds:
        print(f"{kind}: starting the engine", file=sys.stderr, flush=True)
        llm = engine(kind, args, model_dir)
        results.setdefault(kind, []).append(run(llm, args))
        print(f"{kind}: {results[kind][-1]['tok_s']:.2f} tok/s", file=sys.stderr, flush=True)
        shutdown(llm)
    scorer = None if args.no_scorer else engine("dense", args, model_dir)
    rows = {}
    for kind, runs in results.items():
        r = runs[0]
        rows[kind] = dict(
            tok_s=statistics.fmean(x["tok_s"] for x in runs),
            runs_tok_s=[round(x["tok_s"], 3) for x in runs],
            max_blocks=max(r["blocks"]),
            final_blocks=r["blocks"][-1],
            blocks_every_512=r["blocks"][::512],
            ppl=dense_ppl(scorer, r["prompt_ids"], r["tokens"]) if scorer else float("nan"),
            text_ppl=r["text_ppl"],
        )
    if scorer:
        shutdown(scorer)
    base = rows.get("dense", {}).get("tok_s")
    print(f"\n{args.model}, {args.tokens} generated tokens, KV budget {args.budget}, block {args.block_size}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; torch threads as vLLM sets them")
    print(
        "| engine | decode tok/s | vs dense | KV blocks max / at end | blocks every 512 steps "
        "| its generation, dense-scored ppl | reference text ppl, its own attention |"
    )
    print("|---|---:|---:|---|---|---:|---:|")
    for kind, row in rows.items():
        ratio = f"{row['tok_s'] / base:.2f}x" if base else "-"
        print(
            f"| {kind} | {row['tok_s']:.2f} ({', '.join(map(str, row['runs_tok_s']))}) | {ratio} | "
            f"{row['max_blocks']} / {row['final_blocks']} | {row['blocks_every_512']} | {row['ppl']:.2f} | "
            f"{row['text_ppl']:.2f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
