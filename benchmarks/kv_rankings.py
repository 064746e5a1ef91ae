"""Which head ranking keeps the answers? The head-aware cache under each ranking, on kv-bench's retrieval samples.

    PYTHONPATH=. python benchmarks/kv_rankings.py                              # both, needle, mix; 3 seeds
    PYTHONPATH=. python benchmarks/kv_rankings.py --rankings both mix --seeds 1 --lengths 1024
    PYTHONPATH=. python benchmarks/kv_rankings.py --rankings mix --budgets 0.5 0.6 0.7 --json out.json
    PYTHONPATH=. python benchmarks/kv_rankings.py --rankings --snap-kernels 5 15 --dense-from out.json
    PYTHONPATH=. python benchmarks/kv_rankings.py --rankings mix --baselines sinks random:0 random:1 random:2

kv-bench's passkey, NIAH (5 depths) and multi-key samples (the held-out text half, seeds from 1000, or
`--seed-base`: other samples, to check a setting chosen on the first ones)
at each length. Dense reads each sample once; every ranking then runs the head-aware cache at
each of `--budgets` x dense's bytes (`HeadAwareSinkCache.from_profile(rank_by=...)`, the kv-bench
plan) on the samples dense answers. Per ranking and budget: answered / dense-answered per task and
their mean over the three tasks (kv-bench's own "retrieval vs dense" divides the mean score over its
cells by dense's, so it weighs cells, not tasks, alike), the same ratio per seed (mean +- sd and
range: how much one seed's samples decide), the cells (task, length, depth; passkey and
multi-key draw their depth per seed, so each of their samples is a cell) below 0.7x, the same
for kv-bench's cells (NIAH per length and depth, passkey and multi-key per length), the largest
share of dense's bytes held. `--json` keeps every sample's outcome and its margin (`answered`),
written after dense's pass and after each plan, so an interrupted run keeps what it measured.
kv-bench itself compares rankings too (`--rank-by`), but reruns dense each time.

`--snap-kernels K ...` runs kv-bench's SnapKV-style eviction beside (or, with an empty `--rankings`,
instead of) the head-aware plans, at each budget with each pooling width K, on the same samples.
`--baselines sinks random:0 ...` runs kv-bench's controls at the same bytes: sinks + window, a
plain window, the first ranking's plan with its retrieval heads drawn at random (seed k).
`--dense-from JSON` takes dense's outcomes from an earlier run's `--json` (same model, lengths and
seeds) instead of reading every sample again (at 16k tokens on Gemma-3 that pass is most of the run).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time

import torch


def answered(model, cache, s, attention) -> tuple[bool, float]:
    """kv-bench's exact match (every answer token the top-1 prediction, teacher-forced), and the
    margin it was decided by: the smallest, over the answer's tokens, of the right token's logit less
    the best other one (> 0 when answered; near 0, a sample any small change can flip)."""
    from sinkhole.kvbench.methods import answer_logits, chunks, prefill

    ids, ans = torch.tensor([s.ids]), torch.tensor([s.answer])
    with attention(model):
        logits = answer_logits(model, cache, prefill(model, cache, ids, chunks(len(s.ids), 256, 32)), ans)[0]
    right = logits.gather(-1, ans[0, :, None])[:, 0]
    others = logits.scatter(-1, ans[0, :, None], float("-inf")).amax(-1)
    return logits.argmax(-1).tolist() == s.answer, round((right - others).min().item(), 3)


def by_task(hits: dict[tuple, list[bool]]) -> dict[str, list[bool]]:
    """hits: (task, length, depth) -> one bool per dense-answered sample; returns them per task."""
    tasks: dict[str, list[bool]] = {}
    for (task, _, _), h in hits.items():
        tasks.setdefault(task, []).extend(h)
    return tasks


def retrieval_ratio(hits: dict[tuple, list[bool]]) -> float:
    """Answered / dense-answered per task, averaged over the tasks (each task weighs the same)."""
    tasks = by_task(hits)
    return sum(sum(h) / len(h) for h in tasks.values()) / len(tasks)


def grid_cells(hits: dict[tuple, list[bool]]) -> dict[tuple, float]:
    """kv-bench's cells (`sinkhole.results.kvbench`, and its page's NIAH grid): the NIAH samples per
    (length, depth), passkey and multi-key per length over their seeds. Answered / dense-answered per cell."""
    pooled: dict[tuple, list[bool]] = {}
    for (task, n, depth), h in hits.items():
        pooled.setdefault((task, n, depth if task == "niah" else None), []).extend(h)
    return {k: sum(h) / len(h) for k, h in pooled.items()}


def sd(xs: list[float]) -> float:
    """Sample standard deviation; 0 for a single seed."""
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def outcome(s, hit: bool, margin: float | None = None) -> dict:
    row = {"task": s.task, "length": s.length, "depth": s.depth, "seed": s.seed, "answered": hit}
    return row if margin is None else {**row, "margin": margin}


def dense_outcomes(path: str, model: str, samples) -> list[bool]:
    """Dense's outcome for each sample, from an earlier run's --json (SinkholeError when it lacks one)."""
    from sinkhole.errors import SinkholeError

    try:
        record = json.loads(open(path).read())
        if record["model"] != model:
            raise SinkholeError(f"--dense-from {path}: its model is {record['model']}, not {model}")
        got = {(d["task"], d["length"], d["depth"], d["seed"]): d["answered"] for d in record["dense"]}
    except OSError as err:
        raise SinkholeError(f"--dense-from {path}: cannot read it ({err.strerror})") from None
    except (ValueError, KeyError, TypeError) as err:
        raise SinkholeError(f"--dense-from {path}: not a kv_rankings record ({err})") from None
    keys = [(s.task, s.length, s.depth, s.seed) for s in samples]
    missing = [k for k in keys if k not in got]
    if missing:
        raise SinkholeError(f"--dense-from {path}: no dense outcome for {len(missing)} samples, e.g. {missing[0]}")
    return [got[k] for k in keys]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rankings", nargs="*", default=["both", "needle", "mix"])
    ap.add_argument("--snap-kernels", nargs="*", type=int, default=[], help="also SnapKV, with these pooling widths")
    ap.add_argument(
        "--baselines", nargs="*", default=[], help="also these at the same bytes: sinks, window, random:SEED ..."
    )
    ap.add_argument("--dense-from", default=None, help="dense's outcomes from an earlier run's --json")
    ap.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-base", type=int, default=None, help="first sample seed (default: kv-bench's, 1000)")
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.5], help="shares of dense's KV bytes")
    ap.add_argument("--window", type=int, default=None, help="streaming heads' window (default: the cache's)")
    ap.add_argument("--select", type=float, default=None, help="retrieval heads keep this share (kv-bench's --select)")
    ap.add_argument("--select-global-only", action="store_true", help="sliding layers' heads keep their window")
    ap.add_argument("--select-fill", action="store_true", help="what the selections leave keeps heads whole")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write every sample's outcome here")
    args = ap.parse_args()

    import contextlib

    from transformers import DynamicCache

    from sinkhole.cache.head_aware import head_aware_attention
    from sinkhole.cache.head_plan import DEFAULT_WINDOW
    from sinkhole.errors import SinkholeError
    from sinkhole.io import write_atomic
    from sinkhole.kvbench.methods import Plan, check_select_options, dense_bytes, make_cache
    from sinkhole.kvbench.snapkv import snapkv_attention
    from sinkhole.long_tasks import SEED_BASE, Encoder, make_samples
    from sinkhole.probe.loading import load_model
    from sinkhole.profiles.profile import load_profile
    from sinkhole.progress import progress

    torch.set_num_threads(args.threads)
    window = args.window or DEFAULT_WINDOW
    first = (args.rankings or ["mix"])[0]
    # what every head-aware plan shares: the random heads take the first ranking's plan
    shared = dict(
        window=window,
        select=args.select,
        select_sliding=not args.select_global_only,
        select_fill=args.select_fill or None,
    )

    def cache_for(method: str, s, **plan):  # kv-bench's cache for one sample
        return make_cache(method, lm.model, profile, Plan(**plan), len(s.ids), len(s.answer) - 1)[0]

    # (name, budget, the cache for a sample, attention): the head-aware plans, then SnapKV's
    runs = [
        (
            r,
            b,
            lambda s, r=r, b=b: cache_for("head_aware", s, budget=b, rank_by=r, **shared),
            head_aware_attention,
        )
        for r in args.rankings
        for b in args.budgets
    ]
    runs += [
        (f"snapkv:{k}", b, lambda s, k=k, b=b: cache_for("snapkv", s, budget=b, snap_kernel=k), snapkv_attention)
        for k in args.snap_kernels
        for b in args.budgets
    ]
    # the controls at the same bytes
    runs += [
        (
            m,
            b,
            lambda s, m=m, b=b: cache_for(m, s, budget=b, rank_by=first, **shared),
            head_aware_attention,
        )
        for m in args.baselines
        for b in args.budgets
    ]

    try:  # the options first: a typo is told before minutes of loading
        for m in args.baselines:
            if m not in ("sinks", "window") and not re.fullmatch(r"random:\d+", m):
                raise SinkholeError(f"--baselines {m}: expected sinks, window or random:SEED")
        check_select_options(args.select, select_global_only=args.select_global_only, select_fill=args.select_fill)
        lm = load_model(args.model)
        profile = load_profile(lm.name, model=lm)
        enc = Encoder(lm.tokenizer)
        samples = [
            s
            for n in args.lengths
            for t in ("passkey", "niah", "multikey")
            for s in make_samples(enc, t, n, 5, args.seeds, SEED_BASE if args.seed_base is None else args.seed_base)
        ]
        if not runs:
            raise SinkholeError("nothing to run: give --rankings, --snap-kernels or --baselines")
        for _, _, make, _ in runs:  # a plan that cannot fit says so now, not after dense's pass
            for s in {(len(s.ids), len(s.answer)): s for s in samples}.values():
                make(s)
        earlier = dense_outcomes(args.dense_from, lm.name, samples) if args.dense_from else None
    except SinkholeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model, t0 = lm.model, time.perf_counter()
    margins = [None] * len(samples)
    if earlier is not None:
        dense = earlier
    else:
        with progress(total=len(samples), desc="dense", unit="samples") as bar:
            dense = []
            for i, s in enumerate(samples):
                hit, margins[i] = answered(
                    model, DynamicCache(config=model.config), s, lambda m: contextlib.nullcontext()
                )
                dense.append(hit)
                bar.update(1)
    source = f"from {args.dense_from}" if earlier is not None else f"{time.perf_counter() - t0:.0f} s"
    print(f"dense: {sum(dense)} of {len(samples)} samples answered ({source})", flush=True)
    record = {
        "model": lm.name,
        "settings": vars(args),
        "dense": list(map(outcome, samples, dense, margins)),
        "plans": [],
    }

    def save():  # atomic: an interrupt never leaves a half-written record
        if args.json:
            write_atomic(args.json, json.dumps(record, indent=1))

    save()
    for rank_by, budget, make, attention in runs:
        t0, cells, seeds, held, rows = time.perf_counter(), {}, {}, 0.0, []
        with progress(total=sum(dense), desc=f"{rank_by} @ {budget:g}", unit="samples") as bar:
            for s in (s for s, ok in zip(samples, dense) if ok):
                n = len(s.ids) + len(s.answer) - 1
                cache = make(s)
                hit, margin = answered(model, cache, s, attention)
                key = (s.task, s.length, s.depth)
                cells.setdefault(key, []).append(hit)
                seeds.setdefault(s.seed, {}).setdefault(key, []).append(hit)
                held = max(held, cache.kv_bytes() / dense_bytes(model, n))
                rows.append(outcome(s, hit, margin))
                bar.update(1)
        ratio = retrieval_ratio(cells)
        per_seed = [retrieval_ratio(h) for _, h in sorted(seeds.items())]
        low = sorted(f"{t}:{n}:{d}" for (t, n, d), h in cells.items() if sum(h) / len(h) < 0.7)
        grid = grid_cells(cells)
        grid_low = sorted(f"{t}:{n}" + (f":{d}" if d is not None else "") for (t, n, d), r in grid.items() if r < 0.7)
        print(
            f"{rank_by} @ {budget:g}: {ratio:.2f}x dense "
            f"(per seed {statistics.mean(per_seed):.2f} +- {sd(per_seed):.2f}, "
            f"{min(per_seed):.2f}-{max(per_seed):.2f}; "
            f"{', '.join(f'{t} {sum(h)}/{len(h)}' for t, h in by_task(cells).items())}); "
            f"cells below 0.7x: {len(low)} of {len(cells)} {' '.join(low)}; "
            f"kv-bench's cells below 0.7x: {len(grid_low)} of {len(grid)} {' '.join(grid_low)}; "
            f"at most {held:.1%} of dense's bytes; {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        record["plans"].append(
            {
                "rank_by": rank_by,  # a ranking, or "snapkv:<kernel>"
                "budget": budget,
                "retrieval_ratio": ratio,
                "per_seed": per_seed,
                "cells_below_0.7": low,
                "cells": len(cells),
                "grid_cells_below_0.7": grid_low,
                "grid_cells": len(grid),
                "max_kv_share": held,
                "samples": rows,
            }
        )
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
