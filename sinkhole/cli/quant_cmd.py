"""`sinkhole quant`: which layers, channels and tokens to protect when quantizing, in the config format
of the quantizer you use, and (`--validate`) the perplexity that fake-quantized W8A8 reaches with each."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sinkhole.cli.common import add_model_args, add_old_spellings, status
from sinkhole.errors import SinkholeError

HELP = "quantization hints from spike statistics (bitsandbytes, llm-compressor, torchao, smoothquant, prefix)"
EPILOG = """examples:
  sinkhole quant --backend bitsandbytes --hints bnb.json
  sinkhole quant --backend llm-compressor --hints recipe.yaml
  sinkhole quant --backend smoothquant --hints act_scales.pt --alpha 0.8
  sinkhole quant --backend torchao --profile smollm2-135m --hints torchao.json   # from a profile, no calibration
  sinkhole quant --validate --json quant-validate.json                       # perplexity of W8A8 schemes
"""


def _backend_name(name: str) -> str:
    """argparse type: a registered backend's name; an unknown one is refused with the closest name."""
    from sinkhole.errors import SinkholeError
    from sinkhole.quant import get_backend

    try:
        return get_backend(name).name
    except SinkholeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_parser(sub) -> None:
    from sinkhole.quant import BACKENDS

    p = sub.add_parser(
        "quant", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(p)
    c = p.add_argument_group("calibration")
    c.add_argument("--calib", default="builtin", help="'builtin' (Python's pydoc topics, first half) or a text file")
    c.add_argument("--calib-seqs", type=int, default=8, help="calibration sequences (default 8)")
    c.add_argument("--calib-len", type=int, default=256, help="tokens per calibration sequence (default 256)")
    c.add_argument("--profile", help="use a sinkhole profile (shipped name or JSON file) instead of calibrating")
    c.add_argument("--stats-json", type=Path, help="write the per-module calibration statistics here")
    h = p.add_argument_group("hints")
    h.add_argument(
        "--backend",
        type=_backend_name,
        metavar="{" + ",".join(BACKENDS) + "}",
        help="config format to emit: " + "; ".join(f"{b.name}: {b.summary}" for b in BACKENDS.values()),
    )
    h.add_argument(
        "--hints", type=Path, metavar="FILE", help="write the backend's config here (default: print it as JSON)"
    )
    add_old_spellings(h, "--out", dest="hints", instead="--hints", type=Path)
    h.add_argument(
        "--alpha",
        default="auto",
        help="SmoothQuant strength, or 'auto': tuned on calibration perplexity (default auto)",
    )
    v = p.add_argument_group("validation")
    v.add_argument("--validate", action="store_true", help="measure fake-quantized W8A8 perplexity per scheme")
    v.add_argument("--heldout", default="builtin", help="'builtin' (pydoc topics, second half) or a text file")
    v.add_argument("--heldout-seqs", type=int, default=4, help="held-out sequences (default 4)")
    v.add_argument("--heldout-len", type=int, default=512, help="tokens per held-out sequence (default 512)")
    v.add_argument("--json", type=Path, help="write the validation results here")
    p.set_defaults(run=run)


def _given_alpha(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        a = float(text)
    except ValueError:
        raise SinkholeError(f"--alpha must be a number in (0, 1) or 'auto', not '{text}'") from None
    if not 0 < a < 1:
        raise SinkholeError(f"--alpha must be in (0, 1), not {a}")
    return a


def _alpha(args, lm, stats, calib) -> tuple[float | None, dict]:
    """The alpha to emit: a number the user gave, or tuned on calibration perplexity."""
    if args.alpha != "auto":
        return _given_alpha(args.alpha), {"alpha": "given"}
    if stats is None:
        return None, {"alpha": "default (no calibration to tune on)"}
    from sinkhole.quant.evidence import ALPHAS, tune_alpha

    status(f"tuning SmoothQuant alpha over {list(ALPHAS)} on calibration perplexity ...")
    a, ppl = tune_alpha(
        lm, stats, [s[:128] for s in calib[:2]], progress=lambda alpha, i, n: status(f"  [{i + 1}/{n}] alpha {alpha}")
    )
    return a, {
        "alpha": "tuned on calibration perplexity",
        "calibration_perplexity": {str(k): v for k, v in ppl.items()},
    }


def run(args) -> int:
    from sinkhole.cli.common import raise_failures, write_all
    from sinkhole.io import is_stdout, write_output
    from sinkhole.probe.loading import load_model
    from sinkhole.quant import get_backend
    from sinkhole.quant.calibration import collect_stats
    from sinkhole.quant.hints import get_quantization_hints, int8_threshold, prefix_tokens, skip_modules, write_hints
    from sinkhole.quant.texts import calibration_sequences, heldout_sequences
    from sinkhole.render.quant_text import render_stats

    if not args.backend and not args.validate:
        raise SinkholeError("give --backend B (to emit hints) and/or --validate (to measure perplexity)")
    if args.profile and args.validate:
        raise SinkholeError("--validate calibrates on the model itself: drop --profile")
    _given_alpha(args.alpha)  # refuse a bad value before loading anything
    backend = get_backend(args.backend) if args.backend else None
    if backend and backend.needs_out and not args.hints:
        raise SinkholeError(f"{backend.name} writes a binary file: give --hints FILE (it is not printable)")
    lm = load_model(
        args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code, log=status
    )
    stats, calib, failures = None, [], []
    if args.profile:
        from sinkhole.profiles.profile import load_profile

        source = load_profile(args.profile)
        source.check_model(weights_id=lm.weights_id, name=lm.name)
    else:
        calib = calibration_sequences(lm.tokenizer, args.calib, args.calib_seqs, args.calib_len)
        status(f"calibrating on {len(calib)} x {len(calib[0])} tokens of {args.calib} ...")
        stats = source = collect_stats(
            lm, calib, source=str(args.calib), progress=lambda i, n: status(f"  [{i}/{n}] calibration sequence")
        )
        table = render_stats(stats.result())
        # stdout stays parseable JSON when the config itself (or a '-' output) is printed there
        if (args.hints or not args.backend) and not is_stdout(args.stats_json) and not is_stdout(args.json):
            print(table)
        else:
            status(table)
        failures += write_all(
            [
                (
                    args.stats_json,
                    lambda: write_output(
                        args.stats_json,
                        json.dumps(stats.result(tokenizer=lm.tokenizer).to_dict(), indent=1),
                        "statistics",
                    ),
                )
            ]
        )
    need_alpha = args.validate or (backend is not None and backend.needs_alpha)
    alpha, alpha_basis = _alpha(args, lm, stats, calib) if need_alpha else (None, {})
    if args.backend:
        hints = get_quantization_hints(source, args.backend, family=lm.family, tokenizer=lm.tokenizer, alpha=alpha)
        hints["basis"].update(alpha_basis)
        if args.hints:
            from sinkhole.render.quant_text import render_hints_summary

            try:
                written = write_hints(hints, args.hints)
                print(render_hints_summary(hints, written))  # a summary and the path, not the JSON again
            except SinkholeError as err:
                failures.append(str(err))
        else:
            print(json.dumps(hints, indent=1))
    if args.validate:
        from sinkhole.quant.evidence import validate
        from sinkhole.render.quant_text import render_validation

        heldout = heldout_sequences(lm.tokenizer, args.heldout, args.heldout_seqs, args.heldout_len)
        h = {
            "threshold": int8_threshold(stats)[0],
            "alpha": alpha,
            "skip": skip_modules(stats),
            "prefix": prefix_tokens(stats, lm.tokenizer)["token_ids"],
        }
        status(f"validating on {len(heldout)} x {len(heldout[0])} held-out tokens of {args.heldout} ...")
        result = validate(
            lm,
            stats,
            calib,
            heldout,
            h,
            progress=lambda name, i, n: status(f"  [{i + 1}/{n}] {name}"),
            alpha_basis=alpha_basis,
        )
        print(render_validation(result), file=sys.stderr if is_stdout(args.json) else sys.stdout)
        d = result.to_dict()
        failures += write_all(
            [(args.json, lambda: write_output(args.json, json.dumps(d, indent=1), "validation results"))]
        )
    raise_failures(failures)
    return 0
