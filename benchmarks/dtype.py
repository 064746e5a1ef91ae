"""The default dtype on the CPU (sinkhole.models.dtypes): one vocabulary-sweep pass (decoder only,
every sampled token alone at position 0, what `vocab-sweep` runs) in float32 and in bfloat16,
interleaved, same process, model load excluded.

    python benchmarks/dtype.py [--model smollm2-135m] [--tokens 4096] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    import torch

    from sinkhole.experiments.vocab_sweep import sweep
    from sinkhole.probe.loading import load_model

    quiet = dict(log=lambda m: None)
    lms = {d: load_model(a.model, device=a.device, dtype=d, **quiet) for d in ("float32", "bfloat16")}
    V = lms["float32"].model.get_input_embeddings().num_embeddings
    ids = np.random.default_rng(0).choice(V, size=min(a.tokens, V), replace=False)
    times = {d: [] for d in lms}
    for _ in range(a.repeats):
        for d, lm in lms.items():
            t0 = time.perf_counter()
            sweep(lm, ids, batch_size=1024)
            times[d].append(time.perf_counter() - t0)
    print(f"{a.model}, {len(ids)} tokens, {a.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for d, ts in times.items():
        print(f"  {d:9s} median {statistics.median(ts):6.2f} s  ({', '.join(f'{t:.2f}' for t in ts)})")
    f32, bf16 = (statistics.median(times[d]) for d in ("float32", "bfloat16"))
    print(f"  bfloat16 / float32: {bf16 / f32:.2f}x the time")


if __name__ == "__main__":
    main()
