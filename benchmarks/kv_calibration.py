"""Does the length of the calibration streams change which KV heads the head-aware cache keeps whole?

The shipped profiles' streaming scores are measured on copy prompts of `n_tokens` tokens whose random
spans repeat as far apart as fits (1024 tokens: ~728 apart). A head that retrieves over 728 tokens
need not be the one that retrieves over 4000+. This script measures the streaming section at each
`--tokens` value (same prompts' seeds and text half, only longer), writes each as a whole profile
(the shipped one with its `streaming` section replaced) for `sinkhole kv-bench --profile`, and prints
which KV heads a budget of `--budget` x dense bytes keeps whole at each `--lengths` under each
calibration, and how the sets overlap.

    PYTHONPATH=. python benchmarks/kv_calibration.py --model smollm2-135m --tokens 1024 4096 \\
        --out /tmp/h6 --lengths 4096 8184

A section already in --out is read back, not re-measured (a long run can resume).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096], help="calibration prompt lengths")
    ap.add_argument("--count", type=int, default=8, help="copy prompts per calibration")
    ap.add_argument("--window", type=int, default=None, help="the scores' window (default: the profiles')")
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8184], help="stream lengths to plan for")
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--plan-window", type=int, default=None, help="head-aware window (default: the cache's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="kv-calibration", help="folder for the sections and profiles")
    args = ap.parse_args()

    import torch

    from sinkhole.cache.head_aware import HeadAwareSinkCache
    from sinkhole.cache.head_plan import DEFAULT_WINDOW
    from sinkhole.experiments.head_scores import streaming_section
    from sinkhole.probe.loading import load_model
    from sinkhole.profiles.profile import SCORE_WINDOW, load_profile

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model, dtype="float32", log=lambda m: print(m, file=sys.stderr))
    shipped = load_profile(lm.name)
    window = args.window or shipped.streaming.get("window", SCORE_WINDOW)
    sections = {}
    for n in args.tokens:
        path = out / f"stream-{lm.name}-{n}.json"
        if path.exists():
            sections[n] = json.loads(path.read_text())
            continue
        t0 = time.perf_counter()
        sec = streaming_section(lm, window=window, count=args.count, n_tokens=n)
        sec["seconds"] = round(time.perf_counter() - t0, 1)
        path.write_text(json.dumps(sec) + "\n")
        sections[n] = sec
        print(f"{n}-token calibration: {sec['seconds']} s -> {path}", file=sys.stderr)
    for n, sec in sections.items():
        prof = load_profile(lm.name)
        prof.streaming = {k: v for k, v in sec.items() if k != "seconds"}
        prof.save(out / f"profile-{lm.name}-{n}.json")

    plan_window = args.plan_window or DEFAULT_WINDOW
    for length in args.lengths:
        kept = {}
        for n in sections:
            prof = load_profile(out / f"profile-{lm.name}-{n}.json")
            cache = HeadAwareSinkCache.from_profile(
                prof, model=lm.model, budget=args.budget, length=length, window=plan_window
            )
            kept[n] = {(layer, h) for layer, heads in enumerate(cache.memory_plan.retrieval) for h in heads}
            print(f"{length} tokens, {n}-token calibration: {cache.memory_plan.line()}")
            print("  whole: " + " ".join(f"L{layer}h{h}" for layer, h in sorted(kept[n])))
        ns = list(kept)
        for a in ns:
            for b in ns:
                if a < b:
                    print(
                        f"  {length} tokens: {a} vs {b}: {len(kept[a] & kept[b])} in both, "
                        f"only {a}: {' '.join(f'L{x}h{y}' for x, y in sorted(kept[a] - kept[b]))}; "
                        f"only {b}: {' '.join(f'L{x}h{y}' for x, y in sorted(kept[b] - kept[a]))}"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
