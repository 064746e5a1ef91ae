"""Make the shipped profiles, sinkhole/data/profiles/<name>.json, for the bundled models.

    python scripts/make_profiles.py                     # all bundled models, the built-in suite
    python scripts/make_profiles.py smollm2-135m --limit 100
    python scripts/make_profiles.py --streaming-only    # (re)measure only the streaming scores of the
                                                        # shipped files, every other field unchanged
    python scripts/make_profiles.py --streaming-only --stream-tokens 4096 smollm2-135m
    python scripts/make_profiles.py --loss-only gemma3-270m --window 128 --select 0.45
    torchrun --standalone --nproc-per-node 2 scripts/make_profiles.py --loss-only gemma3-270m ...
                                                        # (re)measure only streaming.loss, the deltas
                                                        # the loss plan spends the budget by

Each profile is `SinkDetector(name).detect()` with default settings: the built-in suite, chat as
the model is used (template when the tokenizer has one), threshold 10, epsilon 0.3, and streaming
scores with 4 sinks, a window of 256 and 8 copy prompts of 1024 tokens, and the needle scores
over 22 needle prompts of 1024 and 2048 tokens. `--loss-only` measures each KV head's loss
delta streaming and selecting (`sinkhole.kvbench.head_loss`) on 6 calibration ppl samples of
2048 tokens, with the plan options given (kv-bench's defaults otherwise); under torchrun the ranks
share the forwards.
"""

from __future__ import annotations

import argparse
import sys
import time

from tqdm import tqdm

from sinkhole.cache.head_plan import DEFAULT_WINDOW
from sinkhole.distributed import session
from sinkhole.errors import SinkholeError
from sinkhole.eval.suite import load_suite
from sinkhole.experiments.detector import SinkDetector
from sinkhole.experiments.head_scores import (
    DEFAULT_PROMPTS,
    DEFAULT_TOKENS,
    needle_lengths,
    needle_prompts,
    streaming_section,
)
from sinkhole.kvbench import LOSS_LENGTH, LOSS_SAMPLES
from sinkhole.kvbench.head_loss import loss_forwards, loss_section
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
    ap.add_argument("--loss-only", action="store_true", help="only add/refresh streaming.loss")
    ap.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="with --loss-only: streaming heads' window")
    ap.add_argument("--select", type=float, default=None, help="with --loss-only: the selecting state's share")
    ap.add_argument("--loss-length", type=int, default=LOSS_LENGTH)
    ap.add_argument("--loss-samples", type=int, default=LOSS_SAMPLES)
    ap.add_argument(
        "--loss-part", choices=("all", "ppl", "answers"), default="all", help="with --loss-only: which deltas"
    )
    args = ap.parse_args()
    if args.loss_only:
        try:
            with session() as world:
                for name in args.models:
                    loss_only(name, args, world)
        except SinkholeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    for name in args.models:
        t0 = time.perf_counter()
        probe = ModelProbe(name, log=lambda m: None)
        path = SHIPPED_DIR / f"{name}.json"
        if args.streaming_only:
            profile = load_profile(path, model=probe)
            needles = needle_prompts(probe.lm.tokenizer, needle_lengths(probe.lm.model))
            total = DEFAULT_PROMPTS + len(needles)
            loss = (profile.streaming or {}).get("loss")  # measured apart (--loss-only): kept
            with tqdm(total=total, desc=f"{name} streaming", unit="prompt", file=sys.stderr) as bar:
                profile.streaming = streaming_section(
                    probe.lm, n_tokens=args.stream_tokens, progress=bar.update, needles=needles
                )
            if loss:
                profile.streaming["loss"] = loss
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


def loss_only(name: str, args, world) -> None:
    """Measure the profile's `streaming.loss` (ranks share the forwards); rank 0 writes the file."""
    from sinkhole.progress import progress

    t0 = time.perf_counter()
    probe = ModelProbe(name, log=lambda m: None)
    path = SHIPPED_DIR / f"{name}.json"
    profile = load_profile(path, model=probe)
    loss = profile.streaming.get("loss") if args.loss_part == "answers" else None
    if args.loss_part == "answers" and not loss:
        raise SinkholeError(f"{name}: --loss-part answers adds to a measured streaming.loss: measure it first")
    if loss and (loss["window"], loss["select_share"]) != (args.window, args.select):
        raise SinkholeError(
            f"{name}: streaming.loss was measured with --window {loss['window']} --select {loss['select_share']}: "
            "give the same to add its answers"
        )
    passes = 1 if args.loss_part != "all" else 2
    with progress(
        total=passes * loss_forwards(probe.lm.model, args.select), desc=f"{name} loss", unit="forward"
    ) as bar:
        measured = loss_section(
            probe.lm,
            window=args.window,
            select=args.select,
            length=args.loss_length,
            count=args.loss_samples,
            text=args.loss_part != "answers",
            answers=args.loss_part != "ppl",
            progress=bar.update,
            world=world,
        )
    if world.is_main:
        profile.streaming["loss"] = {**(loss or {}), **measured}
        profile.save(path)
        print(f"{name}: loss deltas; {time.perf_counter() - t0:.0f} s -> {path}")


if __name__ == "__main__":
    sys.exit(main())
