"""What verifying the converted-GGUF cache costs per load (sinkhole.models.gguf_cache.entry_problem).

    python benchmarks/gguf_cache.py            # every entry of ~/.cache/sinkhole/gguf ($SINKHOLE_CACHE)

The entries are hard-linked into a temporary cache (the real one is never written), then checked
three ways: first check of an entry with no integrity record (hashes every file once and records
it), the check on every later load (sizes, stamps, safetensors headers), and the check after a
file's stamp changed (full sha256 again).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from sinkhole.io import cache_dir
from sinkhole.models.gguf_cache import INTEGRITY_NAME, entry_problem


def main() -> None:
    src = cache_dir() / "gguf"
    entries = [p for p in sorted(src.iterdir()) if p.is_dir() and not p.name.startswith(".")] if src.is_dir() else []
    if not entries:
        print(f"no converted models in {src}: run `sinkhole analyze` once first")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for entry in entries:
            copy = Path(tmp) / entry.name
            copy.mkdir()
            for f in entry.iterdir():
                if f.is_file() and f.name != INTEGRITY_NAME:
                    os.link(f, copy / f.name)  # same inode and stamp, no bytes copied
            size = sum(f.stat().st_size for f in copy.iterdir())
            t0 = time.perf_counter()
            assert entry_problem(copy) is None
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(20):
                assert entry_problem(copy) is None
            warm = (time.perf_counter() - t0) / 20
            weights = next(copy.glob("*.safetensors"))
            new = copy / (weights.name + ".new")  # a copy with a new inode: its stamp no longer matches
            shutil.copyfile(weights, new)
            os.replace(new, weights)
            t0 = time.perf_counter()
            assert entry_problem(copy) is None
            changed = time.perf_counter() - t0
            print(
                f"{entry.name}  {size / 1e9:.2f} GB   first check (hash + record) {first:.2f} s   "
                f"every later load {warm * 1e3:.2f} ms   after a stamp change {changed:.2f} s"
            )


if __name__ == "__main__":
    main()
