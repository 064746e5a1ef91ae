"""`sinkhole profile`: detect a model's sink/spike profile over a prompt suite, or show a saved one."""

from __future__ import annotations

import argparse
from pathlib import Path

from sinkhole.cli.common import add_analysis_args, add_chat_args, add_model_args, load_probe, status

HELP = (
    "a model's sink and spike profile (sink positions, pinned KV slots, spike channels) for the cache and quant tools"
)
EPILOG = """examples:
  sinkhole profile --model smollm2-135m --out smollm2.json
  sinkhole profile --model gemma3-270m --limit 100 --out gemma3.json
  sinkhole profile --show smollm2-135m          # a shipped profile (or --show FILE.json)
  sinkhole profile --model smollm2-135m --stream-window 512 --out s.json   # streaming scores for a 512 window
  torchrun --standalone --nproc-per-node 2 -m sinkhole profile --out p.json   # 2 ranks share the passes

Streaming scores (on by default, --no-streaming skips them): per (layer, KV head), the attention share
on the first --stream-sinks tokens + the last --stream-window keys, over --stream-prompts prompts of
1024 tokens with random spans repeated far apart; HeadAwareSinkCache keeps the lowest-scoring heads whole.
"""


def add_parser(sub) -> None:
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
    s.add_argument("--stream-window", type=int, default=256, help="recent keys in the band, default 256")
    s.add_argument("--stream-prompts", type=int, default=8, help="copy prompts of 1024 tokens, default 8")
    o = p.add_argument_group("output")
    o.add_argument("--out", "-o", type=Path, help="write the profile JSON here ('-': stdout)")
    o.add_argument("--show", metavar="NAME_OR_FILE", help="print a shipped or saved profile instead of detecting one")
    p.set_defaults(run=run)


def run(args) -> int:
    from sinkhole.profiles.profile import load_profile
    from sinkhole.report.profile_text import render_profile

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

    failures = write_all([(args.out, lambda: profile.save(args.out))])
    print(render_profile(profile), file=result_stream(args.out))
    raise_failures(failures)
    return 0


def _detect(args, world):
    import argparse

    from sinkhole.eval.suite import load_suite
    from sinkhole.experiments.detect import SinkDetector
    from sinkhole.models.registry import resolve

    suite = world.all_ok(lambda: load_suite(args.prompts, args.limit))  # a bad suite fails before the load
    if suite.selection():
        status(f"--limit {args.limit}: {suite.selection()}")
    keys = ("dtype", "chat", "threshold", "epsilon", "min_sink_rate", "no_streaming", "stream_sinks")
    keys += ("stream_window", "stream_prompts")
    name = world.all_ok(lambda: resolve(args.model).name)
    world.agree({"model": name, "suite": suite.sha256, **{k: getattr(args, k) for k in keys}}, "settings")
    rank_args = argparse.Namespace(**{**vars(args), "device": world.device})
    probe = world.all_ok(lambda: load_probe(rank_args))
    world.agree({"weights_id": probe.info.weights_id, "dtype": probe.info.dtype}, "model")
    from sinkhole.progress import progress

    with progress(total=len(suite), desc="profile", unit="prompt") as bar:
        return SinkDetector(
            probe,
            prompts=suite,
            chat=args.chat,
            threshold=args.threshold,
            epsilon=args.epsilon,
            min_sink_rate=args.min_sink_rate,
            progress=bar.update,
            streaming=None
            if args.no_streaming
            else dict(n_sink=args.stream_sinks, window=args.stream_window, count=args.stream_prompts),
            world=world,
        ).detect()
