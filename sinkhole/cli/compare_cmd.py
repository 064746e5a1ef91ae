"""`sinkhole compare A.json B.json`: two reports (or two eval runs) side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "compare two analyze reports or two eval runs: what changed in spikes, sinks, channels, heads"
EPILOG = """examples:
  sinkhole analyze --model smollm2-135m --prompt "Hello there" --json a.json
  sinkhole analyze --model gemma3-270m --prompt "Hello there" --json b.json
  sinkhole compare a.json b.json --output compare.html
  sinkhole compare runs/smollm2 runs/gemma          # eval run directories (their summary.json)
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("a", help="first report JSON, eval summary.json, or eval run directory")
    p.add_argument("b", help="second one, of the same kind")
    p.add_argument("--output", "-o", type=Path, help="write the comparison as an HTML page here")
    p.add_argument("--json", type=Path, help="write the comparison as JSON here")
    p.set_defaults(run=run)


def run(args) -> int:
    from sinkhole.cli.common import raise_failures, result_stream, write_all
    from sinkhole.eval.comparison import compare, load
    from sinkhole.io import write_output
    from sinkhole.render.compare_page import compare_html
    from sinkhole.render.compare_text import render_compare
    from sinkhole.results.base import write_json

    c = compare(load(args.a), load(args.b))
    failures = write_all(
        [
            (args.output, lambda: write_output(args.output, compare_html(c), "comparison page")),
            (args.json, lambda: write_json(c.to_dict(), args.json)),  # as a dict: NaN made null, as before
        ]
    )
    print(render_compare(c), file=result_stream(args.json))
    raise_failures(failures)
    return 0
