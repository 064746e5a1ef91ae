"""Token mask cost against a plain forward, side by side in one process (issue 26: mask / plain <= 1.15x).

    python benchmarks/mask.py                                  # T = 1024 4096, 5 rounds
    python benchmarks/mask.py --lengths 1024 4096 --rounds 5 --threads 2
    python benchmarks/mask.py --lengths 4096 --memory          # peak RSS, each mode in its own process
    python benchmarks/mask.py --lengths 512 --check-candidates 16   # default candidates vs every token

Modes, alternating every round so that a shared machine's load drifts over all of them alike:
  plain - a plain forward with SDPA (use_cache=False, logits_to_keep=1), as benchmarks/probe.py
  mask  - sinkhole.token_mask on the same ids (default settings: 16 candidate keys + the first token
          and spike tokens; its own batch planning and encoding included)
  probe - ModelProbe.run (every key's attention mass), for reference
SmolLM2-135M on T tokens of pydoc text (benchmarks/probe.py's `setup`). Reported: wall time per
round, its ratio to the same round's plain forward, and the median ratio; CPU (process) time medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe import cpu_model, setup  # noqa: E402  (benchmarks/probe.py)


def steps(T: int, threads: int | None, only: str | None = None) -> dict:
    """The modes' forwards (only one, and nothing else built, when `only` is given: peak RSS)."""
    import torch

    from sinkhole.mask.compute import token_mask
    from sinkhole.probe.probe import ModelProbe

    lm, ids = setup(T, threads)
    x = torch.tensor([ids])
    probe = ModelProbe(lm) if only != "plain" else None
    out = {
        "plain": lambda: lm.model(input_ids=x, use_cache=False, logits_to_keep=1),
        "mask": lambda: token_mask(probe, ids),
        "probe": lambda: probe.run(ids),
    }
    if only in (None, "mask"):
        assert not token_mask(probe, ids[:64]).measured.all(), "the fast path did not run"
    return out if only is None else {only: out[only]}


def interleaved(T: int, rounds: int, threads: int | None) -> None:
    import torch

    fns = steps(T, threads)
    runs = {m: [] for m in fns}
    with torch.inference_mode():
        for fn in fns.values():  # warm-up
            fn()
        for _ in range(rounds):
            for m, fn in fns.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                runs[m].append((time.perf_counter() - t0, time.process_time() - c0))
    plain = runs["plain"]
    for m, r in runs.items():
        per = [w / p for (w, _), (p, _) in zip(r, plain)]
        cpu = statistics.median(c for _, c in r) / statistics.median(c for _, c in plain)
        print(
            f"| {T} | {torch.get_num_threads()} | {m} | {', '.join(f'{w:.2f}' for w, _ in r)} | "
            f"{statistics.median(w for w, _ in r):.2f} | {', '.join(f'{x:.2f}' for x in per)} | "
            f"**{statistics.median(per):.2f}** | {cpu:.2f} |",
            flush=True,
        )


def memory_worker(mode: str, T: int, threads: int | None) -> dict:
    import torch

    fn = steps(T, threads, only=mode)[mode]
    with torch.inference_mode():
        fn()
    return {"mode": mode, "T": T, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def check_candidates(n: int, T: int) -> None:
    """Do the default candidates hold every sink? n chunks of T tokens (pydoc text from token 102400 on,
    away from examples/sae_mask.py's), masked with the default candidates and with every token measured."""
    import numpy as np

    from sinkhole.mask.compute import token_mask
    from sinkhole.probe.probe import ModelProbe

    probe = ModelProbe("smollm2-135m", log=lambda m: None)
    text = " ".join(__import__("pydoc_data.topics", fromlist=["topics"]).topics.values())
    ids = probe.tokenizer(text)["input_ids"][102400:]
    chunks = [ids[i * T : (i + 1) * T] for i in range(n)]
    fast, full = token_mask(probe, chunks), token_mask(probe, chunks, candidates=None)
    sinks = lambda m: set(np.flatnonzero(m.sink).tolist())
    missed = sum(len(sinks(b) - sinks(a)) for a, b in zip(fast, full))
    extra = sum(len(sinks(a) - sinks(b)) for a, b in zip(fast, full))
    spikes = sum(int((a.spike != b.spike).sum()) for a, b in zip(fast, full))
    diff = max(float(np.nanmax(np.abs(a.sink_rate - b.sink_rate))) for a, b in zip(fast, full))
    print(
        f"{n} chunks x {T} tokens: {sum(len(sinks(b)) for b in full)} sinks with every token measured, "
        f"{missed} missed by the default candidates, {extra} extra; spike flags differing: {spikes}; "
        f"largest |sink_rate difference| on measured tokens: {diff:.1e}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--memory", action="store_true", help="peak RSS of each mode, each in its own process")
    ap.add_argument(
        "--check-candidates",
        type=int,
        metavar="N",
        help="N chunks of the first --lengths tokens: do the default candidates hold every sink?",
    )
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.check_candidates:
        check_candidates(args.check_candidates, args.lengths[0])
        return
    if args.worker:
        print(json.dumps(memory_worker(args.worker[0], int(args.worker[1]), args.threads)))
        return
    print(
        f"# {platform.node()} {cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, command: python benchmarks/mask.py {' '.join(sys.argv[1:])}"
    )
    if args.memory:
        print("| T | mode | peak RSS MB | / plain |\n|---|---|---|---|")
        for T in args.lengths:
            mb = {}
            for mode in ("plain", "mask", "probe"):
                cmd = [sys.executable, __file__, "--worker", mode, str(T)]
                cmd += ["--threads", str(args.threads)] if args.threads else []
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                mb[mode] = json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]
                print(f"| {T} | {mode} | {mb[mode]:.0f} | {mb[mode] / mb['plain']:.2f} |", flush=True)
        return
    print("| T | threads | mode | wall s per round | median s | wall / plain per round | median | CPU s / plain |")
    print("|---|---|---|---|---|---|---|---|")
    for T in args.lengths:
        interleaved(T, args.rounds, args.threads)


if __name__ == "__main__":
    main()
