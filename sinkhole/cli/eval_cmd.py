"""`sinkhole eval`: spike and sink statistics over a prompt suite (structural or prompt-specific?)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sinkhole.cli.common import add_analysis_args, add_chat_args, add_model_args, load_locked, status

HELP = "run a prompt suite; per-prompt rows, summary statistics, figures (resumable)"
EPILOG = """examples:
  sinkhole eval --model smollm2-135m --prompts builtin --out runs/smollm2
  sinkhole eval --model gemma3-270m --prompts my_prompts.jsonl --out runs/gemma --limit 100
  sinkhole eval --prompts questions.txt --out runs/q --no-chat --threshold 20
  torchrun --standalone --nproc-per-node 4 -m sinkhole eval --device cuda --out runs/big   # 4 ranks


Re-running the same command into the same --out resumes where it stopped (with any number of
ranks); other settings into that directory are refused. Outputs: results.jsonl, run.json,
summary.json, rows.csv, *.png, summary.html. Under torchrun / accelerate launch each rank takes a
balanced share of the batches and rank 0 merges (docs/eval.md, "More than one GPU or machine").
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(p, sharded=True)
    g = p.add_argument_group("prompts")
    g.add_argument(
        "--prompts",
        default="builtin",
        help="'builtin' (the shipped suite), a .jsonl file "
        '({"prompt", "category"} a line) or a .txt file (one prompt a line)',
    )
    g.add_argument("--limit", type=int, default=None, help="a subset of N prompts, stratified across the categories")
    add_chat_args(g)
    add_analysis_args(p)
    b = p.add_argument_group("run")
    b.add_argument(
        "--out", type=Path, required=True, help="output directory (created; resumed when it holds this run)"
    )
    b.add_argument("--batch-tokens", type=int, default=None, help="padded tokens per forward (B x T), default 4096")
    b.add_argument("--max-batch", type=int, default=None, help="prompts per forward, default 32")
    b.add_argument("--no-figures", action="store_true", help="skip the PNG figures and HTML page")
    b.add_argument(
        "--csv", type=Path, help="also write the per-prompt rows as CSV here (DIR/rows.csv is always written)"
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from sinkhole.distributed import session

    with session(args.device, args.gpus_per_rank) as world:
        return _run(args, world)


def _run(args, world) -> int:
    import shutil
    from contextlib import ExitStack

    from sinkhole.errors import SinkholeError
    from sinkhole.eval import EvalSettings, load_suite, run_eval
    from sinkhole.eval.runner import LOCK_NAME, check_existing, early_manifest, out_lock
    from sinkhole.render.eval_text import render_summary

    suite = world.all_ok(lambda: load_suite(args.prompts, args.limit))
    if suite.selection():
        status(f"--limit {args.limit}: {suite.selection()}")
    settings = EvalSettings(
        threshold=args.threshold, epsilon=args.epsilon, min_sink_rate=args.min_sink_rate, chat=args.chat
    )
    if args.batch_tokens:
        settings.max_batch_tokens = args.batch_tokens
    if args.max_batch:
        settings.max_batch = args.max_batch
    # What decides the numbers and is known before the model loads: every rank must agree, and a
    # directory holding another run is refused now rather than after the load.
    early = world.all_ok(lambda: early_manifest(suite, settings, args.model, args.device, args.dtype))
    world.agree({**early, "batching": [settings.max_batch_tokens, settings.max_batch]}, "settings")
    created = world.is_main and not args.out.exists()
    try:
        with ExitStack() as stack:
            probe = load_locked(stack, args, world, out_lock, check_existing, early)
            rows = _evaluate(args, world, probe, suite, settings, run_eval)
    except BaseException:
        # a run that stopped before writing anything leaves no directory behind
        if created and args.out.is_dir() and {p.name for p in args.out.iterdir()} <= {LOCK_NAME}:
            shutil.rmtree(args.out, ignore_errors=True)
        raise
    if not world.is_main:
        return 0
    try:
        summary = write_outputs(rows, args.out, figures=not args.no_figures, suite=suite)
        if args.csv:
            from sinkhole.eval.export import write_csv

            write_csv(rows, args.csv, {it.index: it.prompt for it in suite.items})
    except OSError as err:
        raise SinkholeError(
            f"cannot write the summary into {args.out} ({err.strerror or err}); every row is safe in "
            f"{args.out}/results.jsonl: free space and run the same command again"
        ) from None
    status(
        f"wrote {args.out}/results.jsonl, summary.json, rows.csv"
        + ("" if args.no_figures else ", figures, summary.html")
        + (f", {args.csv}" if args.csv else "")
    )
    print(render_summary(summary))
    return 0


def _evaluate(args, world, probe, suite, settings, run_eval):
    from sinkhole.cli.common import resumable_progress

    with resumable_progress(len(suite), "eval", "prompt", args.out) as (update, initial):
        return run_eval(probe, suite, args.out, settings, progress=update, initial=initial, world=world)


def write_outputs(rows, out_dir: str | Path, figures: bool = True, suite=None):
    """summary.json and rows.csv (sinkhole.eval.write_summary), then the PNG figures and summary.html
    (sinkhole.render.eval_page) of a run's rows in `out_dir`; returns the summary (`EvalSummary`)."""
    from sinkhole.eval import write_summary

    summary = write_summary(rows, out_dir, suite)
    if figures and rows:
        from sinkhole.render.eval_page import write_page

        write_page(rows, summary, out_dir)
    return summary
