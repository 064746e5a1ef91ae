"""CPU threads for the probe's forward: the measurement behind `--threads`' default (sinkhole/cli/common.py).

    python benchmarks/threads.py [--model smollm2-135m] [--lengths 32 512] [--threads 1 2] [--repeats 3]

For each input length, one probe forward (`ModelProbe.run`, what `analyze` does) per thread count,
interleaved (1, 2, 1, 2, ...) so that a neighbour's load hits every setting alike; prints the median
seconds and the ratio to 1 thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--lengths", type=int, nargs="+", default=[32, 512])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    import torch

    from sinkhole.probe.probe import ModelProbe

    probe = ModelProbe(a.model)
    print(f"{a.model}, {os.cpu_count()} CPUs, torch {torch.__version__}, default threads {torch.get_num_threads()}")
    for T in a.lengths:
        ids = [(i * 7919) % 10000 + 100 for i in range(T)]
        probe.run(ids)  # warm-up
        times: dict[int, list[float]] = {n: [] for n in a.threads}
        for _ in range(a.repeats):
            for n in a.threads:
                torch.set_num_threads(n)
                t0 = time.perf_counter()
                probe.run(ids)
                times[n].append(time.perf_counter() - t0)
        base = statistics.median(times[a.threads[0]])
        print(
            f"T={T:5d}  "
            + "  ".join(
                f"{n} thr {statistics.median(times[n]):6.3f} s ({statistics.median(times[n]) / base:.2f}x)"
                for n in a.threads
            )
        )


if __name__ == "__main__":
    main()
