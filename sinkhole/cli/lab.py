"""`sinkhole lab`: train tiny models on synthetic data and watch sinks (and spikes) emerge, or not."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sinkhole.cli.common import status

HELP = "train tiny transformers on synthetic data (CPU, minutes) and probe spikes and sinks as they emerge"
EPILOG = """examples:
  sinkhole lab --out runs/lab                      # all 9 variants: ~5 min of one CPU core
  sinkhole lab --quick --out runs/lab-quick        # baseline, gated, no-bos at 300 steps: ~35 s
  sinkhole lab --variants baseline,gated --steps 2000 --seed 1 --out runs/gated
  sinkhole lab --variants baseline,gated --seeds 0,1,2 --out runs/seeds   # 6 runs: spread over seeds
  torchrun --standalone --nproc-per-node 3 -m sinkhole lab --quick --out runs/lab-quick   # a variant a rank

variants: baseline, sandwich, qk-norm, gated, sigmoid, softpick, no-bos, head-dim-32, context-128
(each one switch away from the baseline). Re-running the same command into the same --out resumes
after the last finished variant. Outputs: lab.json (rewritten after every checkpoint),
trajectories.png, final.png, lab.html; with --save-checkpoints, checkpoints/<variant>/step_<n>.pt.
Definitions and measured results: docs/lab.md.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "lab", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output directory (created; resumed when it holds this run)"
    )
    p.add_argument("--quick", action="store_true", help="three variants at 300 steps (about 35 s)")
    p.add_argument("--variants", default=None, help="comma-separated variant names (default: all, or the quick three)")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps per variant (default 800; --quick 300)")
    g.add_argument("--seed", type=int, default=0, help="seed of the weights and of the data (same for all variants)")
    g.add_argument(
        "--seeds",
        dest="seed_list",
        metavar="S,S,...",
        default=None,
        help="train every variant once per seed (e.g. 0,1,2); the runs are independent (torchrun shares them)",
    )
    g.add_argument("--checkpoints", type=int, default=None, help="log-spaced checkpoints per variant (default 10)")
    g.add_argument("--layers", type=int, default=None, help="decoder layers of the base model (default 1)")
    g.add_argument("--d-model", type=int, default=None, help="residual width of the base model (default 32)")
    g.add_argument(
        "--task", choices=("bigram-backcopy", "zipf"), default=None, help="synthetic data (default bigram-backcopy)"
    )
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    o = p.add_argument_group("output")
    o.add_argument("--save-checkpoints", action="store_true", help="keep every checkpoint's weights (.pt)")
    o.add_argument("--no-figures", action="store_true", help="skip the PNG figures (lab.html keeps the table)")
    p.set_defaults(run=run)


def seed_list(text: str) -> tuple[int, ...]:
    from sinkhole.errors import SinkholeError

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SinkholeError(f"--seeds takes integers separated by commas, e.g. 0,1,2 (got {text!r})") from None


def settings_from_args(args):
    from dataclasses import replace

    from sinkhole.lab.run import VARIANTS, LabSettings, quick_settings
    from sinkhole.validate import names

    s = quick_settings() if args.quick else LabSettings()
    if args.variants is not None:  # '' is a mistake, not "all of them"
        s = replace(s, variants=names(args.variants, "--variants", VARIANTS))
    train = s.train
    if args.steps is not None:
        train = replace(train, steps=args.steps)
    if args.checkpoints is not None:
        train = replace(train, n_checkpoints=args.checkpoints)
    s = replace(s, train=replace(train, seed=args.seed))
    if args.seed_list is not None:
        s = replace(s, seeds=seed_list(args.seed_list))
    model = dict(s.model)
    if args.layers is not None:
        model["num_hidden_layers"] = args.layers
    if args.d_model is not None:
        model["hidden_size"], model["intermediate_size"] = args.d_model, 3 * args.d_model
    s = replace(s, model=model)
    if args.task is not None:
        s = replace(s, data=replace(s.data, task=args.task))
    return s


def run(args) -> int:
    import torch

    from sinkhole.distributed import quiet, session
    from sinkhole.lab.run import check_settings, run_lab
    from sinkhole.progress import progress
    from sinkhole.report.lab_page import write_outputs
    from sinkhole.report.lab_text import render_table

    settings = settings_from_args(args)
    check_settings(settings)
    torch.set_num_threads(args.threads)
    total = settings.train.steps * len(settings.runs())
    with session("cpu") as world:  # under a launcher the ranks share the variants (rank 0: lab.json)
        bar = progress(total=total, desc="lab", unit="step")

        def log(msg: str) -> None:
            if quiet():
                return
            if hasattr(bar, "write"):  # tqdm on a terminal: print above the bar
                bar.write(msg, file=sys.stderr)
            else:
                print(msg, file=sys.stderr, flush=True)

        try:
            result = run_lab(
                settings, args.out, progress=bar.update, log=log, save_weights=args.save_checkpoints, world=world
            )
        finally:
            bar.close()
    if result is None:  # a rank other than 0
        return 0
    write_outputs(result, args.out, figures=not args.no_figures)
    status(f"wrote {args.out}/lab.json" + ("" if args.no_figures else ", trajectories.png, final.png") + ", lab.html")
    print(render_table(result))
    return 0
