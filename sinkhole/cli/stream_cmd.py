"""`sinkhole stream`: long-text perplexity with a bounded, sink-aware KV cache (StreamingLLM's evaluation)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sinkhole.cli.common import add_model_args, status
from sinkhole.progress import progress

HELP = "perplexity of a long text decoded through a bounded KV cache: window only vs sinks vs recomputation"
EPILOG = """examples:
  sinkhole stream                                       # SmolLM2, Python's docs, cache 256, 4 sinks
  sinkhole stream --model gemma3-270m --tokens 2048 --cache 256 --json stream.json --plot stream.png
  sinkhole stream --text book.txt --cache 512 --sinks 4 --profile my-profile.json
  sinkhole stream --recall --tokens 2048 --budget 0.5 --json recall.json   # copy recall, head-aware cache

methods: dense (full attention while the text fits the model's context), window only (the cache's
most recent tokens), sinks + window (the first --sinks tokens pinned), profile sinks + window (the
positions a sink profile pins), and sliding window with recomputation (the reference, on a sample).

--recall runs the retrieval test instead: copy recall of random-token spans repeated beyond the window,
for dense, window only, sinks + window, the head-aware cache (profile's streaming scores) and the same
with random heads (--random-seeds draws), all at --budget x dense KV bytes (see docs/cache.md).
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "stream", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(p)
    g = p.add_argument_group("stream")
    g.add_argument("--text", type=Path, help="a UTF-8 text file to stream (default: Python's pydoc topics)")
    g.add_argument("--tokens", type=int, default=1024, help="tokens to stream, default 1024")
    g.add_argument("--cache", type=int, default=256, help="keys per global layer, sinks included, default 256")
    g.add_argument("--sinks", type=int, default=4, help="first tokens pinned in 'sinks + window', default 4")
    g.add_argument(
        "--profile",
        help="sink profile (file, or shipped model name) for 'profile sinks + window' "
        "(default: the model's shipped profile when there is one)",
    )
    g.add_argument("--no-profile", action="store_true", help="skip the profile method")
    g.add_argument(
        "--samples",
        type=int,
        default=48,
        help="positions scored by the recompute reference (each costs --cache tokens of compute), default 48",
    )
    from sinkhole.cache.head_plan import DEFAULT_LOCAL_SINKS, DEFAULT_RANK_BY, DEFAULT_WINDOW, RANKINGS

    r = p.add_argument_group("recall (retrieval test)")
    r.add_argument("--recall", action="store_true", help="run the copy-recall test instead of perplexity")
    r.add_argument("--budget", type=float, default=0.5, help="KV memory as a share of dense, default 0.5")
    r.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        help=f"window of the head-aware cache's streaming heads, default {DEFAULT_WINDOW}",
    )
    r.add_argument("--seeds", type=int, default=2, help="copy streams (4 spans of 32 tokens each), default 2")
    r.add_argument(
        "--random-seeds",
        type=int,
        default=3,
        help="draws of the random-heads control (mean and range are printed), default 3",
    )
    r.add_argument(
        "--local-sinks",
        type=int,
        default=DEFAULT_LOCAL_SINKS,
        help="slots per streaming head for the keys that drew the most attention in the window, "
        f"default {DEFAULT_LOCAL_SINKS}",
    )
    r.add_argument(
        "--rank-by",
        choices=RANKINGS,
        default=DEFAULT_RANK_BY,
        help=f"which profile scores pick the full heads (docs/cache.md), default {DEFAULT_RANK_BY}",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--json", type=Path, help="write per-position results (schema sinkhole.stream/1) here ('-': stdout)"
    )
    o.add_argument("--plot", type=Path, help="write a PNG of perplexity against position here")
    p.set_defaults(run=run)


def _profile_positions(args, lm, prof=None) -> list[int] | None:
    from sinkhole.errors import SinkholeError
    from sinkhole.profiles.profile import load_profile

    if args.no_profile:
        return None
    if prof is None:
        try:
            prof = load_profile(lm.name)
        except SinkholeError:
            status(f"no shipped sink profile for {lm.name}: skipping the profile method (pass --profile)")
            return None
    prof.check_model(lm.weights_id, lm.name)
    return _checked_positions(args, prof)


def _checked_positions(args, prof) -> list[int]:
    """The profile's pinned positions, refused when they cannot fit the cache or the stream (checked
    before any streaming: a profile pinning 1e9 slots must not hang, nor 100 slots fail after minutes)."""
    from sinkhole.cache.sink_cache import profile_positions
    from sinkhole.errors import SinkholeError

    if prof.pinned_slots >= args.cache - 1:
        raise SinkholeError(
            f"the profile pins {prof.pinned_slots} slots, too many for --cache {args.cache}: "
            f"use --cache above {prof.pinned_slots + 1} or --no-profile"
        )
    pins = profile_positions(prof)
    late = [p for p in pins if p >= args.tokens]
    if late:
        raise SinkholeError(
            f"the profile pins position {late[0]}, beyond the {args.tokens} streamed tokens: "
            f"stream more tokens (--tokens) or use --no-profile"
        )
    return pins


def run_recall(args) -> int:
    from sinkhole.cache.recall import LABELS, evaluate_recall
    from sinkhole.cli.common import raise_failures, result_stream, write_all
    from sinkhole.errors import SinkholeError
    from sinkhole.probe.loading import load_model
    from sinkhole.profiles.profile import load_profile
    from sinkhole.render.recall_text import render_recall
    from sinkhole.results.base import write_json

    if args.text is not None or args.plot:
        raise SinkholeError("--recall builds its own streams and draws no plot: drop --text/--plot")
    if args.window < 1 or args.local_sinks < 0:
        raise SinkholeError(f"need --window >= 1 and --local-sinks >= 0 (got {args.window}, {args.local_sinks})")
    lm = load_model(
        args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code, log=status
    )
    prof = load_profile(args.profile or lm.name)
    prof.check_model(lm.weights_id, lm.name)
    runs = (len(LABELS) - 1 + args.random_seeds) * args.seeds  # every method once per stream, random once per seed
    with progress(total=runs, desc="recall", unit="run") as bar:
        result = evaluate_recall(
            lm,
            prof,
            n_tokens=args.tokens,
            budget=args.budget,
            window=args.window,
            seeds=tuple(range(args.seeds)),
            rank_by=args.rank_by,
            local_sinks=args.local_sinks,
            random_seeds=tuple(range(args.random_seeds)),
            progress=bar.update,
            log=status,
        )
    failures = write_all([(args.json, lambda: write_json(result.to_dict(), args.json, "recall results"))])
    print(render_recall(result), file=result_stream(args.json))
    raise_failures(failures)
    return 0


def run(args) -> int:

    if args.recall:
        return run_recall(args)

    from sinkhole.cache.stream_ppl import (
        default_text,
        encode_stream,
        evaluate_stream,
        progress_total,
        sample_targets,
    )
    from sinkhole.cli.common import raise_failures, result_stream, write_all
    from sinkhole.probe.loading import load_model
    from sinkhole.profiles.profile import load_profile
    from sinkhole.render.stream_figures import plot_stream
    from sinkhole.render.stream_text import render_table
    from sinkhole.results.base import write_json

    given = None
    if args.profile is not None and not args.no_profile:  # a bad profile fails before the model loads
        given = load_profile(args.profile)
        _checked_positions(args, given)
    if args.text is not None:
        from sinkhole.text import read_text_file

        text, source = read_text_file(args.text), str(args.text)
    else:
        text, source = default_text()
    lm = load_model(
        args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code, log=status
    )
    pins = _profile_positions(args, lm, given)
    ids = encode_stream(lm.tokenizer, text, args.tokens)
    n = ids.shape[1]
    dense_upto = min(n, lm.max_context or n)
    n_samples = len(sample_targets(n, args.cache, args.samples))
    streams = 2 + (pins is not None and pins != list(range(args.sinks)))
    bar = progress(
        total=progress_total(n, args.cache, streams, n_samples, dense_upto),
        unit="step",
        desc="stream",
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} [{elapsed}<{remaining}]",
    )
    try:
        result = evaluate_stream(
            lm,
            ids,
            cache_size=args.cache,
            n_sink=args.sinks,
            profile_positions=pins,
            recompute_samples=args.samples,
            text_source=source,
            progress=bar.update,
            phase=lambda label: bar.set_description(f"stream: {label}"),
        )
    finally:
        bar.close()
    failures = write_all(
        [
            (args.json, lambda: write_json(result.to_dict(), args.json, "stream results")),
            (args.plot, lambda: plot_stream(result, args.plot)),
        ]
    )
    print(render_table(result), file=result_stream(args.json))
    raise_failures(failures)
    return 0
