"""Make the shipped profiles, sinkhole/data/profiles/<name>.json, for the bundled models.

    python scripts/make_profiles.py                     # all bundled models, the built-in suite
    python scripts/make_profiles.py smollm2-135m --limit 100
    python scripts/make_profiles.py --streaming-only    # (re)measure only the streaming scores of the
                                                        # shipped files, every other field unchanged
    python scripts/make_profiles.py --streaming-only --stream-tokens 4096 smollm2-135m

Each profile is `SinkDetector(name).detect()` with default settings: the built-in suite, chat as
the model is used (template when the tokenizer has one), threshold 10, epsilon 0.3, and streaming
scores with 4 sinks, a window of 256 and 8 copy prompts of 1024 tokens, and the needle scores
over 22 needle prompts of 1024 and 2048 tokens.
"""

from __future__ import annotations

import argparse
import sys
import time

from tqdm import tqdm

from sinkhole.eval.suite import load_suite
from sinkhole.experiments.detector import SinkDetector
from sinkhole.experiments.head_scores import (
    DEFAULT_PROMPTS,
    DEFAULT_TOKENS,
    needle_lengths,
    needle_prompts,
    streaming_section,
)
from sinkhole.probe.probe import ModelProbe
from sinkhole.profiles.profile import SHIPPED_DIR, load_profile

BUNDLED = ["smollm2-135m", "gemma3-270m"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=BUNDLED)
    ap.add_argument("--prompts", default="builtin")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--streaming-only", action="store_true", help="only add/refresh the streaming section")
    ap.add_argument(
        "--stream-tokens",
        type=int,
        default=DEFAULT_TOKENS,
        help="tokens per copy prompt of the streaming scores, default %(default)s",
    )
    args = ap.parse_args()
    for name in args.models:
        t0 = time.perf_counter()
        probe = ModelProbe(name, log=lambda m: None)
        path = SHIPPED_DIR / f"{name}.json"
        if args.streaming_only:
            profile = load_profile(path, model=probe)
            needles = needle_prompts(probe.lm.tokenizer, needle_lengths(probe.lm.model))
            total = DEFAULT_PROMPTS + len(needles)
            with tqdm(total=total, desc=f"{name} streaming", unit="prompt", file=sys.stderr) as bar:
                profile.streaming = streaming_section(
                    probe.lm, n_tokens=args.stream_tokens, progress=bar.update, needles=needles
                )
        else:
            suite = load_suite(args.prompts, args.limit)
            with tqdm(total=len(suite), desc=name, unit="prompt", file=sys.stderr) as bar:
                profile = SinkDetector(
                    probe, prompts=suite, progress=bar.update, streaming={"n_tokens": args.stream_tokens}
                ).detect()
        profile.save(path)
        print(
            f"{name}: {profile.sink_rule['description']}; pinned_slots {profile.pinned_slots}; "
            f"{len(profile.spike_channels)} spike channels; {time.perf_counter() - t0:.0f} s -> {path}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
