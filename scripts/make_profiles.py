"""Make the shipped profiles, sinkhole/data/profiles/<name>.json, for the bundled models.

    python scripts/make_profiles.py                     # all bundled models, the built-in suite
    python scripts/make_profiles.py smollm2-135m --limit 100

Each profile is `SinkDetector(name).detect()` with default settings: the built-in suite, chat as
the model is used (template when the tokenizer has one), threshold 10, epsilon 0.3.
"""

from __future__ import annotations

import argparse
import sys
import time

from tqdm import tqdm

from sinkhole.eval.suite import load_suite
from sinkhole.probe.probe import ModelProbe
from sinkhole.profiles.detect import SinkDetector
from sinkhole.profiles.profile import SHIPPED_DIR

BUNDLED = ["smollm2-135m", "gemma3-270m"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=BUNDLED)
    ap.add_argument("--prompts", default="builtin")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    suite = load_suite(args.prompts, args.limit)
    for name in args.models:
        t0 = time.perf_counter()
        probe = ModelProbe(name, log=lambda m: None)
        with tqdm(total=len(suite), desc=name, unit="prompt", file=sys.stderr) as bar:
            profile = SinkDetector(probe, prompts=suite, progress=bar.update).detect()
        path = SHIPPED_DIR / f"{name}.json"
        profile.save(path)
        print(f"{name}: {profile.sink_rule['description']}; pinned_slots {profile.pinned_slots}; "
              f"{len(profile.spike_channels)} spike channels; {time.perf_counter() - t0:.0f} s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
