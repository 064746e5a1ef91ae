"""`sinkhole mechanism`: the spike-and-sink mechanism of a model, measured step by step."""

from __future__ import annotations

import argparse
from pathlib import Path

from sinkhole.cli.common import add_analysis_args, add_chat_args, add_model_args, status

HELP = "lifecycle, spike channels, activation regime, quadratic amplifier, norms, sink keys, interventions"
EPILOG = """examples:
  sinkhole mechanism --json mech.json
  sinkhole mechanism --model gemma3-270m --prompts prompts.txt --output mech.html
  sinkhole mechanism --no-chat --no-interventions
  sinkhole mechanism --vocab-sweep --json mech.json     # adds the vocabulary sweep (in the model's dtype:
                                                        # minutes in float32; `vocab-sweep` runs bfloat16)

--prompts FILE: one prompt per line, or a .jsonl file with a "prompt" (or "text") field per line.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "mechanism", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(p)
    g = p.add_argument_group("prompts")
    g.add_argument(
        "--prompts",
        help="builtin (the eval suite), a .txt (one prompt a line) or .jsonl file (default: 16 built-in prompts)",
    )
    add_chat_args(g)
    add_analysis_args(p, sink_rate=False)
    a = p.add_argument_group("analysis options")
    a.add_argument(
        "--no-interventions", dest="interventions", action="store_false", help="skip the perplexity interventions"
    )
    a.add_argument("--text", type=Path, help="intervention text file (default: Python's pydoc topics)")
    a.add_argument("--text-tokens", type=int, default=1024, help="tokens of the intervention text, default 1024")
    a.add_argument(
        "--vocab-sweep", action="store_true", help="also run the vocabulary sweep (see `sinkhole vocab-sweep`)"
    )
    o = p.add_argument_group("output")
    o.add_argument("--output", "-o", type=Path, help="write the HTML report here")
    o.add_argument("--json", type=Path, help="write the JSON report (with its `mechanism` section) here ('-': stdout)")
    p.set_defaults(run=run)


def run(args) -> int:
    from sinkhole.cli.common import load_probe, raise_failures, result_stream, write_all
    from sinkhole.eval.suite import load_suite
    from sinkhole.experiments.mechanism_study import DEFAULT_PROMPTS, MechanismConfig, add_page_detail, run_mechanism
    from sinkhole.render import html
    from sinkhole.render.mechanism_text import render_mechanism
    from sinkhole.results.report import write_json
    from sinkhole.text import read_text_file

    prompts = [item.prompt for item in load_suite(args.prompts).items] if args.prompts else DEFAULT_PROMPTS
    text = None if args.text is None else read_text_file(args.text)
    cfg = MechanismConfig(
        threshold=args.threshold,
        epsilon=args.epsilon,
        interventions=args.interventions,
        text=text,
        text_tokens=args.text_tokens,
    )
    probe = load_probe(args)
    result, _ = run_mechanism(probe, prompts, chat=args.chat, cfg=cfg, status=status)
    if args.vocab_sweep:
        from sinkhole.experiments.interventions import text_ids
        from sinkhole.experiments.vocab_sweep import vocab_sweep

        status("vocabulary sweep ...")
        result.vocab_sweep = vocab_sweep(probe.lm, text_ids(probe.tokenizer, None, 256), args.threshold)

    def write_page():
        add_page_detail(result, probe, prompts[0], args.chat)  # full maps up to results.report.MAPS_MAX_LEN
        html.write_html(result, args.output)

    failures = write_all([(args.output, write_page), (args.json, lambda: write_json(result, args.json))])
    print(render_mechanism(result), file=result_stream(args.json))
    raise_failures(failures)
    return 0
