"""`sinkhole mask`: per-token spike / sink / norm-ratio mask over a text file, at plain-forward speed."""

from __future__ import annotations

import argparse
from pathlib import Path

from sinkhole.cli.common import add_analysis_args, add_model_args, status

HELP = "per-token spike / sink mask of many texts, for SAE training and circuit work (resumable)"
EPILOG = """examples:
  sinkhole mask --model smollm2-135m --texts corpus.txt --out mask.npz
  sinkhole mask --texts docs.jsonl --out mask.npz --layer 15 --threshold 10

--texts: a .txt file (one text a line) or .jsonl ({"prompt": "..."} a line). Texts are tokenized as
they are (no chat template unless --chat). Re-running the same command resumes where it stopped
(MASK.npz.parts/ holds the finished batches); other settings are refused. Read the result with
sinkhole.mask.store.load_mask(path): per text, token_ids, spike, sink, norm_ratio, sink_rate,
attn_mass, measured (definitions: sinkhole.mask.core).
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "mask", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(p)
    g = p.add_argument_group("texts")
    g.add_argument("--texts", required=True, help="a .txt (one text a line) or .jsonl file")
    g.add_argument("--limit", type=int, default=None, help="an evenly spaced subset of N texts")
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
    m.add_argument("--out", type=Path, required=True, help="the mask file (.npz)")
    m.add_argument("--batch-tokens", type=int, default=None, help="padded tokens per forward (B x T), default 4096")
    m.add_argument("--max-batch", type=int, default=None, help="texts per forward, default 32")
    p.set_defaults(run=run, announce_load=True)


def run(args) -> int:
    from sinkhole.cli.common import load_probe
    from sinkhole.errors import SinkholeError
    from sinkhole.eval.suite import load_suite
    from sinkhole.mask.core import DEFAULT_CANDIDATES, MaskSettings
    from sinkhole.mask.store import run_mask
    from sinkhole.progress import progress

    if str(args.out).endswith(("/", ".parts")) or Path(args.out).is_dir():
        raise SinkholeError(f"--out {args.out} must be a file path (MASK.npz), not a directory")
    if args.all_tokens and args.candidates is not None:
        raise SinkholeError("--all-tokens and --candidates exclude each other")
    suite = load_suite(args.texts, args.limit)
    candidates = None if args.all_tokens else (DEFAULT_CANDIDATES if args.candidates is None else args.candidates)
    settings = MaskSettings(args.layer, args.threshold, args.epsilon, args.min_sink_rate, candidates, bool(args.chat))
    probe = load_probe(args)
    settings = settings.checked(probe.info.n_layers)  # a bad --layer is refused before any forward
    bar = progress(total=len(suite), desc="mask", unit="text")
    try:

        def initial(n: int) -> None:
            if n:
                status(f"resuming: {n} of {len(suite)} texts already in {args.out}.parts")
                bar.n = bar.last_print_n = bar.initial = n
                bar.refresh()

        result = run_mask(
            probe,
            suite,
            args.out,
            settings,
            max_batch_tokens=args.batch_tokens or 4096,
            max_batch=args.max_batch or 32,
            progress=bar.update,
            initial=initial,
        )
    finally:
        bar.close()
    a = result.arrays
    n = len(a["token_ids"])
    status(
        f"wrote {args.out}: {len(result)} texts, {n} tokens, {int(a['spike'].sum())} spike, "
        f"{int(a['sink'].sum())} sink, {int((a['spike'] | a['sink']).sum())} masked"
    )
    return 0
