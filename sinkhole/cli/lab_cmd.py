"""`sinkhole lab`: train tiny models, one paper ablation per variant, over seeds; verdict per claim."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sinkhole.cli.common import status

TASKS = ("bigram-backcopy", "zipf", "text")  # sinkhole.lab.data.TASKS (not imported: --help stays light)

HELP = "train tiny transformers (CPU, minutes per run) and test the paper's ablations: sinks, spikes, seeds, verdicts"
EPILOG = """examples:
  sinkhole lab --out runs/lab                      # every variant x seeds 0,1,2 (see docs/lab.md for the time)
  sinkhole lab --quick --out runs/lab-quick        # baseline, sandwich, gated, no-bos: seeds 0,1,2, fewer steps
  sinkhole lab --variants baseline,gated --steps 2000 --seeds 0,1,2,3,4 --out runs/gated
  sinkhole lab --variants baseline,sandwich --seed 1 --out runs/one   # one seed (no spread, no verdicts)
  torchrun --standalone --nproc-per-node 3 -m sinkhole lab --quick --out runs/lab-quick   # runs shared by ranks

variants (each one switch away from the baseline):
  FFN            gelu, linear-ffn, attn-only
  normalization  sandwich, sandwich-qk, qk-norm, dyt
  attention      gated, sigmoid, softpick
  heads          head-dim-half, head-dim-double (N_head fixed); heads-double, heads-half (d_head x N_head fixed)
  data and loss  no-bos, loss-from-quarter, loss-from-half
Every variant trains once per seed; lab.json and lab.html give mean +- sd per variant and a verdict per
paper claim (supported / contradicted / inconclusive by a 2-pooled-sd rule). Re-running the same command
into the same --out resumes after the last finished run. Outputs: lab.json (rewritten after every
checkpoint), trajectories.png, emergence.png, final.png, lab.html; with --save-checkpoints,
checkpoints/<variant>-seed<s>/step_<n>.pt. Definitions and measured results: docs/lab.md.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "lab", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output directory (created; resumed when it holds this run)"
    )
    p.add_argument("--quick", action="store_true", help="baseline, sandwich, gated, no-bos at fewer steps")
    p.add_argument("--variants", default=None, help="comma-separated variant names (default: all, or the quick four)")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 800; --quick 300)")
    g.add_argument(
        "--seeds",
        dest="seed_list",
        metavar="S,S,...",
        default=None,
        help="train every variant once per seed (default 0,1,2); the runs are independent (torchrun shares them)",
    )
    g.add_argument("--seed", type=int, default=None, help="one seed only (weights and data): no spread, no verdicts")
    g.add_argument("--checkpoints", type=int, default=None, help="log-spaced checkpoints per variant (default 10)")
    g.add_argument("--layers", type=int, default=None, help="decoder layers of the base model")
    g.add_argument("--d-model", type=int, default=None, help="residual width of the base model")
    g.add_argument("--task", choices=TASKS, default=None, help="training data (default: docs/lab.md)")
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
    if args.seed is not None and args.seed_list is not None:
        from sinkhole.errors import SinkholeError

        raise SinkholeError("give --seed (one seed) or --seeds (several), not both")
    if args.seed is not None:
        s = replace(s, seeds=None, train=replace(train, seed=args.seed))
    else:
        s = replace(s, train=train)
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
    from sinkhole.render.lab_page import write_outputs
    from sinkhole.render.lab_text import render_table

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
    figures = "" if args.no_figures else ", trajectories.png, emergence.png, final.png"
    status(f"wrote {args.out}/lab.json{figures}, lab.html")
    print(render_table(result))
    return 0
