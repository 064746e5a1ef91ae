"""`sinkhole analyze`: spike and sink tokens of one prompt."""

from __future__ import annotations

from pathlib import Path

from sinkhole.cli.common import (
    add_analysis_args,
    add_model_args,
    add_prompt_args,
    load_probe,
    raise_failures,
    read_prompt,
    result_stream,
    write_all,
)

HELP = "which tokens spike, which sink, whether they coincide, and their KV budget"
EPILOG = """examples:
  sinkhole analyze --prompt "Explain the theory of relativity in simple terms." --output report.html --json report.json
  sinkhole analyze --model gemma3-270m --prompt-file prompt.txt --no-chat
  sinkhole analyze --model ./my-llama --device auto --dtype bfloat16 --prompt "Hello"
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help=HELP,
        description=HELP,
        epilog=EPILOG,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    add_prompt_args(p)
    add_analysis_args(p)
    o = p.add_argument_group("output")
    o.add_argument("--output", "-o", type=Path, help="write the HTML report here")
    o.add_argument(
        "--json", type=Path, help="write the JSON report here ('-': stdout, and the summary goes to stderr)"
    )
    p.set_defaults(run=run, announce_load=True)


def run(args) -> int:
    from sinkhole.analysis.core import analyze
    from sinkhole.probe.probe import progress_printer
    from sinkhole.render import html
    from sinkhole.render.analyze_text import render_analysis
    from sinkhole.results.report import MAPS_MAX_LEN, write_json

    prompt = read_prompt(args)
    probe = load_probe(args, maps_max_len=MAPS_MAX_LEN if args.output else 0)
    capture = probe.run(prompt, chat=args.chat, progress=progress_printer(probe.info.n_layers))
    report = analyze(capture, threshold=args.threshold, epsilon=args.epsilon, min_sink_rate=args.min_sink_rate)
    failures = write_all(
        [
            (args.output, lambda: html.write_html(report, args.output)),
            (args.json, lambda: write_json(report, args.json)),
        ]
    )
    print(render_analysis(report), file=result_stream(args.json))
    raise_failures(failures)
    return 0
