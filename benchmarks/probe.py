"""Probe cost against a plain forward, side by side in one run (issue: core, "Speed and memory").

    python benchmarks/probe.py                      # T = 512 2048 4096 8192 on SmolLM2
    python benchmarks/probe.py --lengths 512 1024 --repeats 2
    python benchmarks/probe.py --lengths 4096 8192 --modes plain probe --threads 1 --rounds 3
    python benchmarks/probe.py --lengths 4096 8192 --same-process --rounds 4   # time only, steadiest
    python benchmarks/probe.py --lengths 4096 --one-layer --rounds 9           # one layer's attention

Modes, each (mode, T) measured in a fresh subprocess so that its peak RSS is its own:
  plain   - a plain forward with SDPA (use_cache=False, logits_to_keep=1: the cheapest forward)
  probe   - sinkhole's ModelProbe.run (blockwise attention statistics + residual hooks)
  probe-torch - the same with the fused C softmax + column-sum step turned off
            (SINKHOLE_CPU_KERNEL=0: what a machine without a C compiler runs)
  eager   - the original sinkhole's approach: eager attention, output_attentions=True and
            output_hidden_states=True, everything kept; skipped when its attention maps alone
            (layers x heads x T x T x 4 bytes) would not fit in 80% of this machine's memory.
Time is the median of --repeats forwards after one warm-up; peak RSS is the process's maximum
resident set size (ru_maxrss), which includes the model weights and the Python runtime.
--threads sets torch's intra-op threads in every worker (the same for all modes; default: torch's).
With more than one thread every worker asks glibc for one malloc arena, as the `sinkhole` command does
(`sinkhole.cli.common.one_malloc_arena`), so plain and probe are measured under the same allocator.
--rounds R alternates the modes' workers R times (plain, probe, plain, probe, ...) and reports the
median over rounds, so that a shared machine's load drifts over both sides alike. CPU time (the
worker's process time per forward) is reported beside wall time: with one thread it is much
less sensitive to other processes than wall time is.
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


def setup(T: int, threads: int | None):
    """torch threads and allocator as the `sinkhole` command sets them, SmolLM2, and T tokens of pydoc text."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if torch.get_num_threads() > 1:  # what the `sinkhole` command does with several threads, in every mode
        from sinkhole.cli.common import one_malloc_arena

        one_malloc_arena()

    from sinkhole.probe.loading import load_model

    lm = load_model("smollm2-135m", log=lambda m: None)
    text = " ".join(__import__("pydoc_data.topics", fromlist=["topics"]).topics.values())
    ids = lm.tokenizer(text)["input_ids"][:T]
    assert len(ids) == T
    return lm, ids


def worker(mode: str, T: int, repeats: int, threads: int | None = None) -> dict:
    import torch

    from sinkhole.probe.probe import ModelProbe

    lm, ids = setup(T, threads)
    x = torch.tensor([ids])
    if mode == "probe-torch":
        os.environ["SINKHOLE_CPU_KERNEL"] = "0"
    if mode.startswith("probe"):
        probe = ModelProbe(lm)
        step = lambda: probe.run(ids)
    elif mode == "plain":
        step = lambda: lm.model(input_ids=x, use_cache=False, logits_to_keep=1)
    else:
        lm.model.set_attn_implementation("eager")
        step = lambda: lm.model(input_ids=x, use_cache=False, output_attentions=True, output_hidden_states=True)
    times, cpu = [], []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            out = step()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            del out
    return {
        "mode": mode,
        "T": T,
        "seconds": statistics.median(times[1:]),
        "cpu_seconds": statistics.median(cpu[1:]),
        "threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


MODES = ["plain", "probe", "probe-torch", "eager"]


def interleaved(T: int, rounds: int, threads: int | None) -> None:
    """plain, probe and probe-torch alternately in one process (time only: the three share one heap).

    The steadiest time comparison on a shared machine: every round runs the three side by side
    within a minute, with the same allocator state and the same model in memory."""
    import torch

    from sinkhole.probe import cpu_kernel
    from sinkhole.probe.probe import ModelProbe

    lm, ids = setup(T, threads)
    x = torch.tensor([ids])
    probe = ModelProbe(lm)

    def probe_torch_ops():
        with cpu_kernel.turned_off():
            return probe.run(ids)

    steps = {
        "plain": lambda: lm.model(input_ids=x, use_cache=False, logits_to_keep=1),
        "probe": lambda: probe.run(ids),
        "probe-torch": probe_torch_ops,
    }
    if cpu_kernel.kernel() is None:
        print("(no C compiler here: probe and probe-torch both run the torch ops)")
    runs = {m: [] for m in steps}
    with torch.inference_mode():
        for step in steps.values():  # warm-up
            step()
        for _ in range(rounds):
            for m, step in steps.items():
                t0, c0 = time.perf_counter(), time.process_time()
                step()
                runs[m].append((time.perf_counter() - t0, time.process_time() - c0))
    print("| T | threads | mode | wall s per round | median wall s | median CPU s | wall / plain per round | median |")
    print("|---|---|---|---|---|---|---|---|")
    plain = runs["plain"]
    for m, r in runs.items():
        per = [w / p for (w, _), (p, _) in zip(r, plain)]
        print(
            f"| {T} | {torch.get_num_threads()} | {m} | {', '.join(f'{w:.2f}' for w, _ in r)} | "
            f"{statistics.median(w for w, _ in r):.2f} | {statistics.median(c for _, c in r):.2f} | "
            f"{', '.join(f'{x:.2f}' for x in per)} | **{statistics.median(per):.2f}** |",
            flush=True,
        )


def one_layer(T: int, rounds: int) -> None:
    """One layer's attention alone, SmolLM2's shapes (9 query / 3 KV heads, d_head 64), random
    float32 inputs, one thread: SDPA against the exact path with the C step and with torch ops.
    Process time per call, best and median of `rounds` (modes alternate)."""
    import torch

    from sinkhole.probe import cpu_kernel
    from sinkhole.probe.exact_attention import exact_attention_with_stats

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, T, 64, generator=g) for h in (9, 3, 3))

    def exact_torch_ops():
        with cpu_kernel.turned_off():
            return exact_attention_with_stats(q, k, v, None, 64**-0.5)

    steps = {
        "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        "exact, C step": lambda: exact_attention_with_stats(q, k, v, None, 64**-0.5),
        "exact, torch ops": exact_torch_ops,
    }
    times = {m: [] for m in steps}
    with torch.inference_mode():
        for _ in range(rounds + 1):
            for m, step in steps.items():
                c0 = time.process_time()
                step()
                times[m].append(time.process_time() - c0)
    best_sdpa = min(times["sdpa"][1:])
    for m, t in times.items():
        t = t[1:]  # the first round warms up
        print(f"| {T} | {m} | {min(t):.3f} | {statistics.median(t):.3f} | {min(t) / best_sdpa:.2f} |", flush=True)


def eager_fits(T: int, n_layers=30, n_heads=9) -> bool:
    need = n_layers * n_heads * T * T * 4
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return need < 0.8 * total


def run_worker(mode: str, T: int, args) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", mode, str(T), "--repeats", str(args.repeats)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:  # e.g. killed for memory
        print(
            f"  {mode} T={T} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr
        )
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict | None:
    if not runs:
        return None
    out = dict(runs[0])
    for k in ("seconds", "cpu_seconds", "peak_rss_mb"):
        out[k] = statistics.median(r[k] for r in runs)
    out["all_seconds"] = [round(r["seconds"], 2) for r in runs]
    return out


def cpu_model() -> str:
    """The CPU's model name (ratios depend on it: this VM has been an AMD EPYC and an Intel Xeon)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096, 8192])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["plain", "probe", "eager"], choices=MODES)
    ap.add_argument("--threads", type=int, default=None, help="torch threads in every worker (default: torch's)")
    ap.add_argument("--rounds", type=int, default=1, help="alternate the modes' workers this many times")
    ap.add_argument(
        "--same-process",
        action="store_true",
        help="time plain, probe and probe-torch alternately in one process, --rounds times (no memory figures)",
    )
    ap.add_argument(
        "--one-layer",
        action="store_true",
        help="one layer's attention alone (SDPA vs the exact path with and without the C step), one thread",
    )
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats, args.threads)))
        return
    if args.one_layer:
        print(f"# {cpu_model()}, one thread, command: python benchmarks/probe.py {' '.join(sys.argv[1:])}")
        print("| T | attention | best s | median s | best / SDPA's best |\n|---|---|---|---|---|")
        for T in args.lengths:
            one_layer(T, max(args.rounds, 3))
        return
    if args.same_process:
        print(
            f"# {platform.node()} {cpu_model()}, load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}, "
            f"command: python benchmarks/probe.py {' '.join(sys.argv[1:])}"
        )
        for T in args.lengths:
            interleaved(T, args.rounds, args.threads)
        return
    print(
        f"# {platform.node()} {cpu_model()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"command: python benchmarks/probe.py {' '.join(sys.argv[1:])}"
    )
    print(
        "| T | threads | plain s | probe s | eager s | plain MB | probe MB | eager MB | time b/a | CPU time b/a "
        "| mem b/a | time c/b | mem c/b | probe-torch s | its time / plain | its CPU time / plain | its MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for T in args.lengths:
        runs = {m: [] for m in args.modes}
        for _ in range(args.rounds):
            for mode in args.modes:
                if mode == "eager" and not eager_fits(T):
                    continue
                r = run_worker(mode, T, args)
                if r:
                    runs[mode].append(r)
        res = {m: median_of(r) for m, r in runs.items()}
        a, b, c, d = res.get("plain"), res.get("probe"), res.get("eager"), res.get("probe-torch")
        f = lambda r, k, fmt: (fmt % r[k]) if r else "-"
        ratio = lambda x, y, k: f"{x[k] / y[k]:.2f}" if x and y else "-"
        threads = (a or b or c or d or {}).get("threads", "-")
        print(
            f"| {T} | {threads} | {f(a, 'seconds', '%.2f')} | {f(b, 'seconds', '%.2f')} | {f(c, 'seconds', '%.2f')} | "
            f"{f(a, 'peak_rss_mb', '%.0f')} | {f(b, 'peak_rss_mb', '%.0f')} | {f(c, 'peak_rss_mb', '%.0f')} | "
            f"{ratio(b, a, 'seconds')} | {ratio(b, a, 'cpu_seconds')} | {ratio(b, a, 'peak_rss_mb')} | "
            f"{ratio(c, b, 'seconds')} | {ratio(c, b, 'peak_rss_mb')} | {f(d, 'seconds', '%.2f')} | "
            f"{ratio(d, a, 'seconds')} | {ratio(d, a, 'cpu_seconds')} | {f(d, 'peak_rss_mb', '%.0f')} |",
            flush=True,
        )
        if args.rounds > 1:
            print(
                "  per-round wall s: " + "; ".join(f"{m} {r['all_seconds']}" for m, r in res.items() if r),
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
