"""The documented search for a lab model in which the spike emerges (docs/lab.md, "The spike search").

Each run trains one baseline (one seed) for a setting given as JSON overrides and appends one line to
a JSON-lines file: the setting, the spike score of position 0 and the largest over tokens at every
checkpoint, the sink mass, and wall and CPU seconds. One thread per run.

    python benchmarks/lab_search.py OUT.jsonl '{"model": {"num_hidden_layers": 4}, "train": {"steps": 800}}'
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

import torch


def main(out: str, setting: str) -> None:
    from sinkhole.lab.data import TokenStream
    from sinkhole.lab.model import build_model, n_params
    from sinkhole.lab.run import PROBE_BATCH_INDEX, LabSettings, variant_configs
    from sinkhole.lab.train import train

    torch.set_num_threads(1)
    spec = json.loads(setting)
    base = LabSettings()
    model = dict(spec.get("model", {}))
    if "hidden_size" in model and "intermediate_size" not in model:
        model["intermediate_size"] = 3 * model["hidden_size"]
    s = replace(
        base,
        model=model,
        data=replace(base.data, **spec.get("data", {})),
        train=replace(base.train, **{"n_checkpoints": 4, **spec.get("train", {})}),
    )
    from sinkhole.lab.run import VARIANTS

    mcfg, dcfg = variant_configs(s, VARIANTS["baseline"])
    stream = TokenStream(dcfg, s.train.seed)
    m = build_model(mcfg, s.train.seed)
    w0, c0 = time.perf_counter(), time.process_time()

    def show(c, _model) -> None:  # progress while it runs (stderr)
        print(f"step {c.step}: spike {c.spike_score:.2f}x, sink mass {c.sink_mass:.3f}", file=sys.stderr, flush=True)

    cks = train(m, stream, s.train, stream.batch(PROBE_BATCH_INDEX, s.train.probe_batch), on_checkpoint=show)
    row = {
        "setting": spec,
        "params": n_params(m),
        "wall_s": round(time.perf_counter() - w0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
        "steps": [c.step for c in cks],
        "spike0": [round(c.spike_score, 2) for c in cks],
        "spike_max": [round(c.spike_score_max, 2) for c in cks],
        "top_ratio": [round(c.top_ratio, 1) for c in cks],
        "sink_mass": [round(c.sink_mass, 3) for c in cks],
        "eval_loss": round(cks[-1].eval_loss, 3),
        "norm_ratio_by_layer": [round(x, 2) for x in cks[-1].norm_ratio_by_layer],
    }
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
