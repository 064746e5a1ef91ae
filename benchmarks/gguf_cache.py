"""What verifying the converted-GGUF cache costs per load (sinkhole.models.gguf_cache), side by side
with the load it guards.

    python benchmarks/gguf_cache.py [--repeats 5]     # every entry of ~/.cache/sinkhole/gguf ($SINKHOLE_CACHE)

The entries are hard-linked into a temporary cache (the real one is never written) and
SINKHOLE_CACHE points there. Per entry: the first check of an entry with no integrity record
(hashes every file and records it); then, interleaved `--repeats` times,
- "load, no check": `load_model(<entry directory>)` (config, tokenizer, safetensors; no check),
- "load + check": `load_model(<the .gguf>)`, what every command does: the cheap checks, then the
  content check in a thread beside the load (`check_content_later`),
- "check alone": `entry_problem` (every file's xxh3-128 against the record), and for comparison
  the same bytes through sha256 and, when installed, blake3 (one thread).
Medians. The cost of the check per load is (load + check) - (load, no check).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from sinkhole.models.gguf_cache import INTEGRITY_NAME, SOURCE_NAME, entry_problem


def _files(entry: Path) -> list[Path]:
    return [f for f in sorted(entry.iterdir()) if f.is_file() and f.name != INTEGRITY_NAME]


def _hash_files(entry: Path, make) -> None:
    for f in _files(entry):
        h = make()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
        h.digest()


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(copy: Path, gguf: str, repeats: int, others: dict) -> None:
    from sinkhole.probe.loading import load_model

    quiet = dict(log=lambda m: None)
    size = sum(f.stat().st_size for f in _files(copy))
    first = _timed(lambda: entry_problem(copy))
    load_model(gguf, **quiet)  # warm: imports, page cache, the GGUF's sha256 memo
    t = {k: [] for k in ["load, no check", "load + check", "check alone", *others]}
    for _ in range(repeats):
        t["load, no check"].append(_timed(lambda: load_model(str(copy), **quiet)))
        t["load + check"].append(_timed(lambda: load_model(gguf, **quiet)))
        t["check alone"].append(_timed(lambda: entry_problem(copy)))
        for name, make in others.items():
            t[name].append(_timed(lambda make=make: _hash_files(copy, make)))
    med = {k: statistics.median(v) for k, v in t.items()}
    base = med["load, no check"]
    print(f"{Path(gguf).name}  {size / 1e9:.2f} GB  first check (hash + record) {first:.2f} s")
    for k, v in med.items():
        print(f"  {k:18s} {v:6.3f} s  {v / base:6.1%} of a load without check")
    print(f"  the check adds {(med['load + check'] - base) / base:+.1%} to a load")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    from sinkhole.io import cache_dir

    src = cache_dir() / "gguf"
    entries = [p for p in sorted(src.iterdir()) if p.is_dir() and not p.name.startswith(".")] if src.is_dir() else []
    if not entries:
        print(f"no converted models in {src}: run `sinkhole analyze` once first")
        return
    others = {"sha256": hashlib.sha256}
    try:
        import blake3

        others["blake3"] = blake3.blake3
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SINKHOLE_CACHE"] = tmp
        for entry in entries:
            gguf = json.loads((entry / SOURCE_NAME).read_text())["gguf"]
            copy = Path(tmp) / "gguf" / entry.name
            copy.mkdir(parents=True)
            for f in _files(entry):
                os.link(f, copy / f.name)  # same inode and bytes, nothing copied
            bench(copy, gguf, a.repeats, others)


if __name__ == "__main__":
    main()
