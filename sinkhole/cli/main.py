"""The `sinkhole` command: a thin layer that parses arguments and calls the library.

Subcommands register themselves through `add_parser(sub)`; heavy imports (torch, transformers)
happen inside each subcommand's `run`, so `sinkhole --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from sinkhole.errors import SinkholeError

# name -> module under sinkhole.cli
SUBCOMMANDS = ["analyze", "mechanism", "vocab-sweep", "eval", "profile", "stream", "quant", "lab"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sinkhole",
        description="Measure spike tokens (massive activations) and attention sinks in causal LMs.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = f"sinkhole.cli.{name.replace('-', '_')}"
        try:
            importlib.import_module(module).add_parser(sub)
        except ModuleNotFoundError as err:  # a subcommand still being written
            if err.name != module:
                raise
    return p


def main(argv: list[str] | None = None) -> int:
    # Offline by default: the hub is never contacted, even by a library deep inside transformers.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        return int(args.run(args) or 0)
    except SinkholeError as err:
        print(f"sinkhole: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sinkhole: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
