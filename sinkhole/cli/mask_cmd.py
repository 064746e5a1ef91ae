"""`sinkhole mask`: per-token spike / sink / norm-ratio mask over a text file, at plain-forward speed."""

from __future__ import annotations

import argparse
from pathlib import Path

from sinkhole.cli.common import add_analysis_args, add_model_args, add_old_spellings, status

HELP = "per-token spike / sink mask of many texts, for SAE training and circuit work (resumable)"
EPILOG = """examples:
  sinkhole mask --model smollm2-135m --texts corpus.txt --npz mask.npz
  sinkhole mask --texts docs.jsonl --npz mask.npz --layer 15 --threshold 10
  torchrun --standalone --nproc-per-node 4 -m sinkhole mask --device cuda --texts corpus.txt --npz mask.npz

--texts: a .txt file (one text a line) or .jsonl ({"prompt": "..."} a line). Texts are tokenized as
they are (no chat template unless --chat). Re-running the same command resumes where it stopped
(MASK.npz.parts/ holds the finished batches), with any number of ranks; other settings are refused.
Under torchrun / accelerate launch each rank takes a balanced share of the batches and rank 0 writes
MASK.npz, the same bytes as one process (docs/interp.md). Read the result with
sinkhole.mask.store.load_mask(path): per text, token_ids, spike, sink, norm_ratio, sink_rate,
attn_mass, measured (definitions: sinkhole.mask.compute).
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "mask", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(p, sharded=True)
    g = p.add_argument_group("texts")
    g.add_argument("--texts", required=True, help="a .txt (one text a line) or .jsonl file")
    g.add_argument("--limit", type=int, default=None, help="a subset of N texts (stratified by category in a .jsonl)")
    g.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template to each text")
    add_analysis_args(p)
    m = p.add_argument_group("mask")
    m.add_argument("--layer", type=int, default=None, help="spike and norm ratio at this layer (default: peak)")
    m.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="keys whose attention mass is measured, beside the first token and spike tokens (default 16)",
    )
    m.add_argument("--all-tokens", action="store_true", help="measure every token's attention mass (slower)")
    m.add_argument("--npz", dest="out", type=Path, metavar="MASK.npz", help="the mask file to write (required)")
    add_old_spellings(m, "--out", dest="out", instead="--npz", type=Path)
    m.add_argument("--batch-tokens", type=int, default=None, help="padded tokens per forward (B x T), default 4096")
    m.add_argument("--max-batch", type=int, default=None, help="texts per forward, default 32")
    # no early "loading ..." line (announce_load): the texts and an existing run are checked first
    p.set_defaults(run=run)


def run(args) -> int:
    from sinkhole.distributed import session

    with session(args.device, args.gpus_per_rank) as world:
        return _run(args, world)


def _run(args, world) -> int:
    import shutil
    from contextlib import ExitStack

    from sinkhole.cli.common import load_locked
    from sinkhole.errors import SinkholeError
    from sinkhole.eval.suite import load_suite
    from sinkhole.mask.compute import DEFAULT_CANDIDATES, MaskSettings
    from sinkhole.mask.store import LOCK, check_existing, early_manifest, out_lock, parts_dir

    def inputs():
        if args.out is None:  # not `required=True`: the old spelling --out may give it
            raise SinkholeError("give the mask file to write: --npz MASK.npz")
        if str(args.out).endswith(("/", ".parts")) or Path(args.out).is_dir():
            raise SinkholeError(f"--npz {args.out} must be a file path (MASK.npz), not a directory")
        if args.all_tokens and args.candidates is not None:
            raise SinkholeError("--all-tokens and --candidates exclude each other")
        cands = None if args.all_tokens else (DEFAULT_CANDIDATES if args.candidates is None else args.candidates)
        s = MaskSettings(args.layer, args.threshold, args.epsilon, args.min_sink_rate, cands, bool(args.chat))
        # every check but --layer's upper bound, and the texts (an empty file too), before the model loads
        return load_suite(args.texts, args.limit), s.checked(None)

    suite, settings = world.all_ok(inputs)
    if suite.selection():
        status(f"--limit {args.limit}: {suite.selection('texts')}")
    batching = [args.batch_tokens or 4096, args.max_batch or 32]
    # What decides the numbers and is known before the model loads: every rank must agree, and a
    # run with other settings in OUT.parts is refused now rather than after the load.
    early = world.all_ok(lambda: early_manifest(suite, settings, args.model, args.device, args.dtype))
    world.agree({**early, "batching": batching}, "settings")
    parts = parts_dir(args.out)
    created = world.is_main and not parts.exists()
    try:
        with ExitStack() as stack:
            probe = load_locked(stack, args, world, out_lock, check_existing, early)
            # a bad --layer is refused before any forward
            settings = world.all_ok(lambda: settings.checked(probe.info.n_layers))
            result = _mask(args, world, probe, suite, settings, batching)
    except BaseException:
        # a run that stopped before writing anything leaves no parts directory behind
        if created and parts.is_dir() and {p.name for p in parts.iterdir()} <= {LOCK}:
            shutil.rmtree(parts, ignore_errors=True)
        raise
    if not world.is_main:
        return 0
    a = result.arrays
    n = len(a["token_ids"])
    status(
        f"wrote {args.out}: {len(result)} texts, {n} tokens, {int(a['spike'].sum())} spike, "
        f"{int(a['sink'].sum())} sink, {int((a['spike'] | a['sink']).sum())} masked"
    )
    return 0


def _mask(args, world, probe, suite, settings, batching):
    from sinkhole.cli.common import resumable_progress
    from sinkhole.mask.store import run_mask

    with resumable_progress(len(suite), "mask", "text", f"{args.out}.parts") as (update, initial):
        return run_mask(
            probe,
            suite,
            args.out,
            settings,
            max_batch_tokens=batching[0],
            max_batch=batching[1],
            progress=update,
            initial=initial,
            world=world,
        )
