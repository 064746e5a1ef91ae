"""Benchmark `sinkhole eval`: the built-in suite through the probe vs plain forwards of the same batches.

For every batch (as `plan_batches` cuts it), side by side and interleaved so that a shared, busy
machine slows both alike:
    plain  model(**forward_kwargs(same left-padded inputs)), transformers' default
           attention (SDPA), use_cache=False, logits_to_keep=1: the least any forward can cost
    eval   probe.run_batch + analyze + prompt_row for each prompt: what `sinkhole eval` does per batch
           (minus the JSON write, which is timed separately as `write`)

    python benchmarks/eval.py --model smollm2-135m [--limit N] [--batch-tokens 4096] [--max-batch 32]

With --ranks 1,2: `torchrun --standalone --nproc-per-node N -m sinkhole eval --threads T` for each N
(in turn, --repeats times), each into a fresh directory: prompts/s over the eval phase (run.json
written, i.e. models loaded and settings agreed, to results.jsonl merged), the wall time with start-up
and loads, and the time rank 0's merge of N shards into results.jsonl takes on the same rows.

    python benchmarks/eval.py --ranks 1,2 --limit 200 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import torch

from sinkhole.analysis.core import analyze
from sinkhole.eval import EvalSettings, load_suite
from sinkhole.eval.runner import ResultsStore, plan_batches, prompt_row
from sinkhole.probe.batch import forward_kwargs, left_pad, pad_id
from sinkhole.probe.probe import ModelProbe


def plain_forward(probe: ModelProbe, batch_ids: list[list[int]]) -> None:
    ids, valid = left_pad(batch_ids, pad_id(probe.tokenizer))
    with torch.inference_mode():
        probe.model(**forward_kwargs(ids, valid, probe.lm.device))


def merge_seconds(out: str, n: int, repeats: int = 5) -> float:
    """Time ResultsStore.merge of the finished rows dealt out again into n shards (best of `repeats`)."""
    import shutil
    from pathlib import Path

    rows = Path(out, "results.jsonl").read_bytes().splitlines(keepends=True)
    order = [json.loads(r)["index"] for r in rows]
    best = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            shutil.rmtree(tmp)
            Path(tmp, "shards").mkdir(parents=True)
            Path(tmp, "results.jsonl").write_bytes(b"".join(rows[0::n]))
            for r in range(1, n):
                Path(tmp, "shards", f"rank-{r}.jsonl").write_bytes(b"".join(rows[r::n]))
            t0 = time.perf_counter()
            ResultsStore(tmp).merge(order)
            best = min(best, time.perf_counter() - t0)
    return best


def ranks_benchmark(args) -> int:
    import subprocess
    from pathlib import Path

    ranks = [int(x) for x in args.ranks.split(",")]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for n in ranks:
                out = Path(tmp, f"{n}-{rep}")
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)]
                cmd += ["-m", "sinkhole", "eval", "--model", args.model, "--prompts", args.prompts, "--no-figures"]
                cmd += ["--out", str(out), "--threads", str(args.threads or 1)]
                cmd += ["--limit", str(args.limit)] if args.limit else []
                load0 = os.getloadavg()[0]
                t0 = time.time()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                wall = time.time() - t0
                if proc.returncode:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return 1
                phase = (out / "results.jsonl").stat().st_mtime - (out / "run.json").stat().st_mtime
                prompts = len((out / "results.jsonl").read_bytes().splitlines())
                runs.append(
                    {
                        "ranks": n,
                        "repeat": rep,
                        "prompts": prompts,
                        "eval_s": phase,
                        "prompts_per_s": prompts / phase,
                        "wall_s": wall,
                        "merge_s": merge_seconds(str(out), n),
                        "load_avg_before": load0,
                    }
                )
                print(json.dumps(runs[-1]), flush=True)
    best = {n: max(r["prompts_per_s"] for r in runs if r["ranks"] == n) for n in ranks}
    out = {
        "model": args.model,
        "threads_per_rank": args.threads or 1,
        "runs": runs,
        "best_prompts_per_s": best,
        "speedup_vs_first": {n: best[n] / best[ranks[0]] for n in ranks},
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", default="builtin")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-tokens", type=int, default=EvalSettings.max_batch_tokens)
    ap.add_argument("--max-batch", type=int, default=EvalSettings.max_batch)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--ranks", default=None, help="e.g. 1,2: time torchrun jobs of these many ranks instead")
    ap.add_argument("--repeats", type=int, default=1, help="with --ranks: runs of each world size, interleaved")
    args = ap.parse_args()
    if args.ranks:
        return ranks_benchmark(args)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    probe = ModelProbe(args.model, log=lambda m: None)
    load_s = time.perf_counter() - t0
    suite = load_suite(args.prompts, args.limit)
    settings = EvalSettings(max_batch_tokens=args.batch_tokens, max_batch=args.max_batch)
    chat = probe.has_chat_template()
    t0 = time.perf_counter()
    encoded = [probe.encode(it.prompt, chat)[0] for it in suite.items]
    encode_s = time.perf_counter() - t0
    batches = plan_batches([len(x) for x in encoded], settings.max_batch_tokens, settings.max_batch)
    plain_forward(probe, encoded[batches[-1][0] : batches[-1][0] + 1])  # warm-up
    plain_s = eval_s = write_s = 0.0
    padded = sum(len(b) * len(encoded[b[0]]) for b in batches)
    real = sum(map(len, encoded))
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultsStore(tmp)
        for batch in batches:
            ids = [encoded[i] for i in batch]
            t0 = time.perf_counter()
            plain_forward(probe, ids)
            t1 = time.perf_counter()
            caps = probe.run_batch(ids)
            rows = [prompt_row(suite.items[i], analyze(c)) for i, c in zip(batch, caps)]
            t2 = time.perf_counter()
            store.append(rows)
            t3 = time.perf_counter()
            plain_s, eval_s, write_s = plain_s + t1 - t0, eval_s + t2 - t1, write_s + t3 - t2
    out = {
        "model": probe.info.name,
        "prompts": len(suite),
        "chat": chat,
        "batches": len(batches),
        "tokens": real,
        "padded_tokens": padded,
        "batch_tokens": settings.max_batch_tokens,
        "max_batch": settings.max_batch,
        "load_s": load_s,
        "encode_s": encode_s,
        "plain_s": plain_s,
        "eval_s": eval_s,
        "write_s": write_s,
        "ratio": (eval_s + write_s) / plain_s,
        "eval_total_s": encode_s + eval_s + write_s,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
