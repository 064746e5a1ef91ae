"""MKL_CBWR=AUTO,STRICT, which the CLI sets (sinkhole/cli/main.py): its effect on agreement across
thread counts and its cost.

    python benchmarks/mkl_cbwr.py [--model smollm2-135m] [--repeats 3]

Each setting runs in fresh processes (MKL reads the variable once), alternating default and strict
so that a neighbour's load hits both alike. Per setting: the row counts at which a (rows x 576) @
(576 x 1536) float32 matmul differs between 1 and 2 threads, and the median seconds of a forward of
512 and of 7 tokens at 2 threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import sys, time, torch
from sinkhole.models.loading import load_model
w = torch.randn(576, 1536, generator=torch.Generator().manual_seed(0))
differ = []
for rows in range(1, 20):
    x = torch.randn(rows, 576, generator=torch.Generator().manual_seed(rows))
    torch.set_num_threads(1); a = x @ w
    torch.set_num_threads(2); b = x @ w
    differ += [] if torch.equal(a, b) else [rows]
m = load_model(sys.argv[1], dtype="float32").model
ids = torch.randint(0, 40000, (1, 512), generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    m(ids)
    t = time.perf_counter()
    for _ in range(4): m(ids)
    long = (time.perf_counter() - t) / 4
    t = time.perf_counter()
    for _ in range(40): m(ids[:, :7])
    short = (time.perf_counter() - t) / 40
print(differ, long, short, sep="|")
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    runs: dict[str, list] = {"default": [], "AUTO,STRICT": []}
    for _ in range(a.repeats):
        for setting, out in runs.items():
            env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
            if setting != "default":
                env["MKL_CBWR"] = setting
            line = subprocess.run(
                [sys.executable, "-c", CHILD, a.model], env=env, capture_output=True, text=True, check=True
            )
            differ, long, short = line.stdout.strip().splitlines()[-1].split("|")
            out.append((differ, float(long), float(short)))
    base = runs["default"]
    for setting, out in runs.items():
        long = statistics.median(r[1] for r in out)
        short = statistics.median(r[2] for r in out)
        print(
            f"{setting:12} 1 vs 2 threads differ at rows {out[0][0]}; forward 512 tok {long:.3f} s "
            f"({long / statistics.median(r[1] for r in base):.2f}x), 7 tok {short * 1e3:.1f} ms "
            f"({short / statistics.median(r[2] for r in base):.2f}x)"
        )


if __name__ == "__main__":
    main()
