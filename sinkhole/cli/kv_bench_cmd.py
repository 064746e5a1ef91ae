"""`sinkhole kv-bench`: KV caches at the same bytes on passkey, NIAH, multi-key, variable tracking, copy
and perplexity (sinkhole.kvbench)."""

from __future__ import annotations

import argparse

from sinkhole.cli.common import add_model_args, status

HELP = "KV caches at the same bytes on long-context tasks: passkey, NIAH grid, multi-key, variable tracking, copy, ppl"
EPILOG = """examples:
  sinkhole kv-bench --quick --json kv.json --output kv.html           # 1024 tokens, a few minutes
  sinkhole kv-bench --json kv.json --output kv.html                   # the default: 6 tasks, 1024-4096
  sinkhole kv-bench --tasks passkey,niah,multikey,vartrack,copy,ppl --lengths 1024,2048,4096,8064 \\
      --budget 0.5 --depths 5 --seeds 3 --json kv.json --output kv.html     # SmolLM2's context: 8192
  sinkhole kv-bench --model gemma3-270m --window 128 --lengths 2048,8192 --json kv-gemma.json
  sinkhole kv-bench --model gemma3-270m --window 128 --select 0.45 --lengths 1024,2048,4096,8192 --json kv-sel.json
  sinkhole kv-bench --model gemma3-270m --window 128 --select 0.45 --seed-base 2000 --json kv-held-out.json

methods (all but dense at --budget x dense KV bytes at each sample's length): dense, window (most
recent keys), sinks (StreamingLLM: first tokens + window), head_aware (the profile's streaming scores
choose the heads that keep everything, or with --select a share of the prompt chosen by its last
queries), random (the same with random heads, --random-seeds seeds),
snapkv (keep the prompt keys the last window's queries attend to most). An interrupted run resumes
from --json's sidecar OUT.cells.jsonl (same settings); see docs/cache.md.
"""
QUICK = dict(tasks="passkey,niah,multikey,copy,ppl", lengths="1024", depths=3, seeds=1)
DEFAULT = dict(tasks="passkey,niah,multikey,vartrack,copy,ppl", lengths="1024,2048,4096", depths=5, seeds=1)


def add_parser(sub) -> None:
    from sinkhole.cache.head_plan import DEFAULT_LOCAL_SINKS, DEFAULT_RANK_BY, DEFAULT_WINDOW, RANKINGS
    from sinkhole.kvbench import SNAP_KERNEL as DEFAULT_KERNEL
    from sinkhole.kvbench import SNAP_WINDOW
    from sinkhole.long_tasks import SEED_BASE

    p = sub.add_parser(
        "kv-bench", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(p)
    g = p.add_argument_group("benchmark")
    g.add_argument("--tasks", help=f"comma-separated, default {DEFAULT['tasks']}")
    g.add_argument(
        "--lengths",
        help=f"context lengths in tokens, default {DEFAULT['lengths']} (a preset's are cut to the model's "
        "context less 128 tokens of answer room)",
    )
    g.add_argument("--depths", type=int, help=f"NIAH depths from 0%% to 100%%, default {DEFAULT['depths']}")
    g.add_argument("--seeds", type=int, help=f"samples per cell (NIAH: per depth), default {DEFAULT['seeds']}")
    g.add_argument(
        "--seed-base",
        type=int,
        default=SEED_BASE,
        help="sample i's seed is this + i, default %(default)s: another base draws other samples (held-out checks)",
    )
    g.add_argument("--quick", action="store_true", help=f"preset for options not given: {QUICK}")
    g.add_argument("--methods", default="dense,window,sinks,head_aware,random,snapkv", help="default: all")
    g.add_argument("--random-seeds", type=int, default=3, help="random-head controls, default 3")
    g.add_argument(
        "--all-cells",
        action="store_true",
        help="run every method where dense fails every sample of an exact-match cell too (skipped by default)",
    )
    c = p.add_argument_group("caches")
    c.add_argument("--budget", type=float, default=0.5, help="KV bytes as a share of dense's, default 0.5")
    c.add_argument("--profile", help="sink profile with streaming scores (default: the model's shipped one)")
    c.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        help="head-aware streaming heads' window, default %(default)s",
    )
    c.add_argument("--local-sinks", type=int, default=DEFAULT_LOCAL_SINKS, help="default %(default)s")
    c.add_argument(
        "--rank-by",
        choices=RANKINGS,
        default=DEFAULT_RANK_BY,
        help="default %(default)s; loss (for measuring with): each head streams, selects or keeps everything as "
        "the profile's measured loss deltas say (sinkhole profile --loss); on Gemma-3 it loses passkeys "
        "that mix keeps (docs/cache.md)",
    )
    c.add_argument(
        "--snap-window", type=int, default=SNAP_WINDOW, help="SnapKV's observation window, default %(default)s"
    )
    c.add_argument(
        "--snap-kernel", type=int, default=DEFAULT_KERNEL, help="SnapKV's pooling width, default %(default)s"
    )
    c.add_argument(
        "--select",
        type=float,
        help="head_aware / random: heads put first keep this share of what dense holds for them (the prompt; a "
        "sliding layer's window), the keys the last --snap-window queries attend to most, instead of all "
        "(default: all; Gemma-3: 0.45)",
    )
    c.add_argument(
        "--select-global-only",
        action="store_true",
        help="with --select: sliding-window layers' heads keep their whole window instead of the share "
        "(the earlier rule; docs/cache.md)",
    )
    c.add_argument(
        "--select-fill",
        action="store_true",
        help="with --select: what the selections leave of the budget keeps heads whole, the plan's "
        "first (copy and needle heads: what reads a span back or free text; docs/cache.md)",
    )
    c.add_argument("--chunk", type=int, default=256, help="prompt tokens per forward, default %(default)s")
    o = p.add_argument_group("output")
    o.add_argument("--json", help="results (schema sinkhole.kvbench/1); finished cells are kept beside it")
    o.add_argument("-o", "--output", help="an HTML page: tables, NIAH grid per method, accuracy vs KV bytes")
    p.set_defaults(run=run)


def resolve(args):
    """BenchSettings from the arguments (the --quick or default preset fills what is not given)."""
    from sinkhole.errors import SinkholeError
    from sinkhole.kvbench.bench import BenchSettings
    from sinkhole.kvbench.methods import METHODS, Plan, check_select_options, variants
    from sinkhole.long_tasks import TASKS
    from sinkhole.validate import integer, names

    if not args.json:
        raise SinkholeError("kv-bench needs --json OUT: finished cells are kept there, so a run can resume")
    preset = QUICK if args.quick else DEFAULT
    tasks = names(args.tasks or preset["tasks"], "--tasks", TASKS)
    try:
        lengths = tuple(int(x) for x in (args.lengths or preset["lengths"]).split(",") if x.strip())
    except ValueError:
        raise SinkholeError(f"--lengths takes comma-separated token counts (got {args.lengths!r})") from None
    if not lengths:
        raise SinkholeError("--lengths names no length")
    for n in lengths:
        integer(n, "--lengths", lo=256, hi=1 << 20, example=1024)
    if len(set(lengths)) != len(lengths):
        raise SinkholeError("--lengths names a length twice")
    methods = names(args.methods, "--methods", METHODS)
    depths = integer(args.depths if args.depths is not None else preset["depths"], "--depths", lo=1, hi=101)
    seeds = integer(args.seeds if args.seeds is not None else preset["seeds"], "--seeds", lo=1, hi=1000)
    integer(args.random_seeds, "--random-seeds", lo=1, hi=100)
    integer(args.seed_base, "--seed-base", lo=0, example=2000)
    integer(args.snap_window, "--snap-window", lo=1)
    integer(args.snap_kernel, "--snap-kernel", lo=1)
    integer(args.chunk, "--chunk", lo=1)
    check_select_options(args.select, select_global_only=args.select_global_only, select_fill=args.select_fill)
    if args.select_fill and args.rank_by == "loss":
        raise SinkholeError("--rank-by loss chooses the whole heads itself: drop --select-fill")
    plan = Plan(
        budget=args.budget,
        window=args.window,
        local_sinks=args.local_sinks,
        rank_by=args.rank_by,
        snap_window=args.snap_window,
        snap_kernel=args.snap_kernel,
        chunk=args.chunk,
        select=args.select,
        select_sliding=None if args.select is None else not args.select_global_only,
        select_fill=args.select_fill or None,
    )
    return BenchSettings(
        tasks,
        lengths,
        tuple(variants(methods, args.random_seeds)),
        depths,
        seeds,
        plan,
        all_cells=args.all_cells,
        seed_base=args.seed_base,
    )


def too_long(model: str, lengths) -> None:
    """Refuse --lengths the model's context cannot hold (a sample is its length plus its answer)."""
    from sinkhole.errors import SinkholeError
    from sinkhole.models.registry import known_context

    context = known_context(model)
    if context and max(lengths) >= context:
        raise SinkholeError(
            f"--lengths {max(lengths)}: past {model}'s context of {context} tokens (a sample needs its "
            f"length plus its answer): use lengths below {context}"
        )


def fit_preset(settings, context: int | None):
    """The preset's lengths on a model whose context cannot hold them with their answers: the longest
    become the context less ANSWER_ROOM (8192 -> 8064 on SmolLM2's 8192), said on stderr."""
    from dataclasses import replace

    from sinkhole.long_tasks import ANSWER_ROOM

    top = (context or 0) - ANSWER_ROOM
    if top < 256:  # no context, or one too short for any length: the bench says so per cell
        return settings
    fitted = tuple(dict.fromkeys(min(n, top) for n in settings.lengths))
    if fitted != settings.lengths:
        status(f"lengths {','.join(map(str, fitted))}: the preset's fitted to the context of {context} tokens")
    return replace(settings, lengths=fitted)


def run(args) -> int:
    from sinkhole.cache.head_plan import loss_deltas
    from sinkhole.cli.common import raise_failures, write_all
    from sinkhole.kvbench.bench import run_bench
    from sinkhole.probe.loading import load_model
    from sinkhole.profiles.profile import load_profile
    from sinkhole.progress import progress
    from sinkhole.render.kvbench_text import fmt_score, render_kvbench
    from sinkhole.results.base import write_json

    settings = resolve(args)
    if args.lengths:  # a preset's lengths are fitted to the model after the load instead
        too_long(args.model, settings.lengths)  # before the weights load, when the config tells
    given = load_profile(args.profile) if args.profile else None  # a bad profile fails before the model loads
    if given is not None and settings.plan.rank_by == "loss":
        loss_deltas(given.streaming or {})
    lm = load_model(
        args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code, log=status
    )
    if not args.lengths:
        settings = fit_preset(settings, lm.max_context)
    prof = given or load_profile(lm.name)
    prof.check_model(lm.weights_id, lm.name)
    n_cells = len(settings.tasks) * len(settings.lengths) * len(settings.methods)

    def log(c):
        status(
            f"  {c.task} {c.length} {c.method}: {fmt_score(c.metric, c.score)}  KV {c.kv_share:.0%} of dense  "
            f"{c.seconds:.1f} s"
        )

    def skipped(task, length, rest):
        why = "dense failed every sample"
        status(f"  {task} {length}: {why}, {len(rest)} other cells skipped (--all-cells runs them)")

    with progress(total=n_cells, desc="kv-bench", unit="cell") as bar:
        result = run_bench(lm, prof, settings, args.json, progress=bar.update, log=log, skipped=skipped)
    d = result.to_dict()

    def page():
        from sinkhole.render.kvbench_page import write_page

        write_page(result, args.output)

    failures = write_all([(args.json, lambda: write_json(d, args.json, "kv-bench results")), (args.output, page)])
    if not failures:
        from sinkhole.kvbench.resume import CellStore

        CellStore(args.json, {}).finish()
    print(render_kvbench(result))
    raise_failures(failures)
    return 0
