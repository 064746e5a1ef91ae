"""Seconds from starting a `sinkhole` command to its first line on stderr (or its exit, when it
prints nothing there): what a user waits on a silent terminal. Interleaved runs of each command.

    python benchmarks/cli_startup.py [--repeats 3] [-- COMMAND ...]

Default command: `sinkhole analyze --prompt Hello` (the process is stopped at its first line).
`--before DIR` also runs each command on an older copy of the package (`git archive REV sinkhole |
tar -x -C DIR`), side by side. `--version`, `--help` and usage errors are timed with hyperfine
(BENCHMARKS.md, "CLI start-up").
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

# Runs sinkhole from DIR instead of the editable install (whose import hook comes first otherwise).
BEFORE = (
    "import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
    "sys.path.insert(0, {dir!r}); from sinkhole.cli.main import main; sys.exit(main())"
)


def first_line_seconds(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc.stderr.readline()
    dt = time.perf_counter() - t0
    proc.kill()
    proc.wait()
    return dt


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--before", help="directory holding an older sinkhole/ package")
    p.add_argument("command", nargs="*", default=["analyze", "--prompt", "Hello"])
    a = p.parse_args()
    runs = {"now": [sys.executable, "-m", "sinkhole.cli.main", *a.command]}
    if a.before:
        runs["before"] = [sys.executable, "-c", BEFORE.format(dir=os.path.abspath(a.before)), *a.command]
    times = {k: [] for k in runs}
    for _ in range(a.repeats):
        for k, cmd in runs.items():
            times[k].append(first_line_seconds(cmd))
    print(f"sinkhole {' '.join(a.command)}: seconds to the first stderr line, median of {a.repeats}")
    for k, ts in times.items():
        print(f"  {k:7s} {statistics.median(ts):6.2f}  ({', '.join(f'{t:.2f}' for t in ts)})")
    if a.before:
        print(f"  before / now: {statistics.median(times['before']) / statistics.median(times['now']):.1f}x")


if __name__ == "__main__":
    main()
