"""`sinkhole profile`: detect a model's sink/spike profile over a prompt suite, or show a saved one."""

from __future__ import annotations

import argparse
from pathlib import Path

from sinkhole.cli.common import (
    add_analysis_args,
    add_chat_args,
    add_model_args,
    add_old_spellings,
    load_probe,
    status,
)

HELP = (
    "a model's sink and spike profile (sink positions, pinned KV slots, spike channels) for the cache and quant tools"
)
EPILOG = """examples:
  sinkhole profile --model smollm2-135m --json smollm2.json
  sinkhole profile --model gemma3-270m --limit 100 --json gemma3.json
  sinkhole profile --show smollm2-135m          # a shipped profile (or --show FILE.json)
  sinkhole profile --model smollm2-135m --stream-window 512 --json s.json   # streaming scores for a 512 window
  torchrun --standalone --nproc-per-node 2 -m sinkhole profile --json p.json   # 2 ranks share the passes

Streaming scores (on by default, --no-streaming skips them): per (layer, KV head), the attention share
on the first --stream-sinks tokens + the last --stream-window keys, over --stream-prompts prompts of
1024 tokens with random spans repeated far apart, and the attention the answer puts on the needle in 22
needle prompts (NIAH, multi-key, passkey at 1024 and 2048 tokens, from the calibration half of the
text); HeadAwareSinkCache keeps the heads that reach back whole (docs/cache.md). --loss adds what
each KV head costs in loss streaming (and selecting) on calibration ppl samples and on the needle
prompts' answers: what `kv-bench --rank-by loss` plans by.
"""


def add_parser(sub) -> None:
    from sinkhole.cache.head_plan import DEFAULT_WINDOW
    from sinkhole.kvbench import LOSS_LENGTH, LOSS_SAMPLES
    from sinkhole.profiles.profile import SCORE_WINDOW

    p = sub.add_parser(
        "profile", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(p, sharded=True)
    g = p.add_argument_group("prompts")
    g.add_argument("--prompts", default="builtin", help="'builtin', a .jsonl or a .txt suite")
    g.add_argument("--limit", type=int, default=None, help="a subset of N prompts, stratified across the categories")
    add_chat_args(g)
    add_analysis_args(p)
    s = p.add_argument_group("streaming scores (for the head-aware cache)")
    s.add_argument("--no-streaming", action="store_true", help="skip the per-head streaming scores")
    s.add_argument("--stream-sinks", type=int, default=4, help="sink tokens in the band, default 4")
    s.add_argument(
        "--stream-window", type=int, default=SCORE_WINDOW, help=f"recent keys in the band, default {SCORE_WINDOW}"
    )
    s.add_argument("--stream-prompts", type=int, default=8, help="copy prompts of 1024 tokens, default 8")
    s.add_argument(
        "--loss",
        action="store_true",
        help="also measure each KV head's loss delta streaming (and selecting, with --loss-select) on "
        "calibration ppl samples and needle prompts, for kv-bench --rank-by loss (2-4 forwards per KV head)",
    )
    s.add_argument("--loss-window", type=int, default=DEFAULT_WINDOW, help="with --loss: the streaming window")
    s.add_argument("--loss-select", type=float, default=None, help="with --loss: the selecting state's share")
    s.add_argument("--loss-length", type=int, default=LOSS_LENGTH, help="with --loss: prompt tokens per sample")
    s.add_argument("--loss-samples", type=int, default=LOSS_SAMPLES, help="with --loss: calibration samples")
    o = p.add_argument_group("output")
    o.add_argument("--json", type=Path, help="write the profile JSON here ('-': stdout)")
    add_old_spellings(o, "--out", "-o", dest="json", instead="--json", type=Path)
    o.add_argument("--show", metavar="NAME_OR_FILE", help="print a shipped or saved profile instead of detecting one")
    p.set_defaults(run=run)


def run(args) -> int:
    from sinkhole.profiles.profile import load_profile
    from sinkhole.render.profile_text import render_profile

    if args.show:
        print(render_profile(load_profile(args.show)))
        return 0
    from sinkhole.distributed import session

    # under a launcher the ranks share the prompt and streaming passes
    with session(args.device, args.gpus_per_rank) as world:
        profile = _detect(args, world)
    if profile is None:  # a rank other than 0
        return 0
    from sinkhole.cli.common import raise_failures, result_stream, write_all

    failures = write_all([(args.json, lambda: profile.save(args.json))])
    print(render_profile(profile), file=result_stream(args.json))
    raise_failures(failures)
    return 0


def _detect(args, world):
    import argparse

    from sinkhole.eval.suite import load_suite
    from sinkhole.experiments.detector import SinkDetector
    from sinkhole.experiments.head_scores import needle_lengths, needle_prompts
    from sinkhole.models.registry import resolve

    suite = world.all_ok(lambda: load_suite(args.prompts, args.limit))  # a bad suite fails before the load
    if suite.selection():
        status(f"--limit {args.limit}: {suite.selection()}")
    keys = ("dtype", "chat", "threshold", "epsilon", "min_sink_rate", "no_streaming", "stream_sinks")
    keys += ("stream_window", "stream_prompts", "loss", "loss_window", "loss_select", "loss_length", "loss_samples")
    if args.loss:
        world.all_ok(lambda: _check_loss(args))
    name = world.all_ok(lambda: resolve(args.model).name)
    world.agree({"model": name, "suite": suite.sha256, **{k: getattr(args, k) for k in keys}}, "settings")
    rank_args = argparse.Namespace(**{**vars(args), "device": world.device})
    probe = world.all_ok(lambda: load_probe(rank_args))
    world.agree({"weights_id": probe.info.weights_id, "dtype": probe.info.dtype}, "model")
    streaming = None
    if not args.no_streaming:
        streaming = dict(n_sink=args.stream_sinks, window=args.stream_window, count=args.stream_prompts)
    if streaming is not None:  # built here to size the bar (a tokenizer may not build every task)
        streaming["needles"] = needle_prompts(probe.lm.tokenizer, needle_lengths(probe.lm.model))
    bars = _Bars(len(suite), streaming)
    try:
        profile = SinkDetector(
            probe,
            prompts=suite,
            chat=args.chat,
            threshold=args.threshold,
            epsilon=args.epsilon,
            min_sink_rate=args.min_sink_rate,
            progress=bars.prompts,
            streaming=None if streaming is None else {**streaming, "progress": bars.streams},
            world=world,
        ).detect()
    finally:
        bars.close()
    if args.loss:  # every rank measures its share; rank 0 alone holds the profile (the others None)
        loss = _loss(args, probe.lm, world)
        if profile is not None:
            profile.streaming["loss"] = loss
    return profile


def _check_loss(args) -> None:
    from sinkhole.errors import SinkholeError
    from sinkhole.validate import MAX_SEQS, integer, like_option

    if args.no_streaming:
        raise SinkholeError("--loss adds to the streaming scores: drop --no-streaming")
    like_option(args.loss_window, "--loss-window", "window")
    if args.loss_select is not None:
        like_option(args.loss_select, "--loss-select", "select")
    integer(args.loss_length, "--loss-length", lo=64)
    integer(args.loss_samples, "--loss-samples", hi=MAX_SEQS)


def _loss(args, lm, world) -> dict:
    """The loss deltas on calibration ppl samples, then on the calibration needle prompts (`answers`)."""
    from sinkhole.kvbench.head_loss import loss_forwards, loss_section
    from sinkhole.progress import progress

    per_pass = loss_forwards(lm.model, args.loss_select)
    status(f"loss deltas: {per_pass} forwards on calibration text, then {per_pass} on needle prompts ...")
    with progress(total=2 * per_pass, desc="loss deltas", unit="forward") as bar:
        return loss_section(
            lm,
            window=args.loss_window,
            select=args.loss_select,
            length=args.loss_length,
            count=args.loss_samples,
            progress=bar.update,
            world=world,
        )


class _Bars:
    """The two passes' progress, one after the other: the suite's prompts, then the streaming scores'
    copy prompts (1024 tokens each, most of the time on a CPU) and needle prompts, whose bar opens as
    the first fills so its time estimate is its own. Rank 0 hears of every rank's work
    (sinkhole.distributed)."""

    def __init__(self, n_prompts: int, streaming: dict | None):
        from sinkhole.progress import progress

        self.n_prompts, self.streaming = n_prompts, streaming
        self.bar = progress(total=n_prompts, desc="profile", unit="prompt")
        self.stream_bar = None

    def prompts(self, k: int) -> None:
        self.bar.update(k)
        if self.bar.n >= self.n_prompts and self.streaming is not None:
            self._open_streams()

    def streams(self, k: int) -> None:
        self._open_streams()
        self.stream_bar.update(k)

    def _open_streams(self) -> None:
        if self.stream_bar is not None:
            return
        from sinkhole.progress import progress

        self.bar.close()
        s = self.streaming
        status(
            f"streaming scores: {s['count']} copy prompts, sinks {s['n_sink']} + window {s['window']} per KV head, "
            f"then {len(s['needles'])} needle prompts ..."
        )
        self.stream_bar = progress(total=s["count"] + len(s["needles"]), desc="streaming scores", unit="prompt")

    def close(self) -> None:
        self.bar.close()
        if self.stream_bar is not None:
            self.stream_bar.close()
