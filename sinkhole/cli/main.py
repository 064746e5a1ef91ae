"""The `sinkhole` command: a thin layer that parses arguments and calls the library.

Subcommands register themselves through `add_parser(sub)`; heavy imports (torch, transformers)
happen inside each subcommand's `run`, so `sinkhole --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from sinkhole import __version__
from sinkhole.errors import SinkholeError

# name -> module under sinkhole.cli
SUBCOMMANDS = [
    "analyze",
    "mechanism",
    "vocab-sweep",
    "eval",
    "mask",
    "profile",
    "stream",
    "kv-bench",
    "quant",
    "lab",
    "models",
    "compare",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sinkhole",
        description="Measure spike tokens (massive activations) and attention sinks in causal LMs.",
    )
    p.add_argument("--version", action="version", version=f"sinkhole {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"sinkhole.cli.{name.replace('-', '_')}_cmd").add_parser(sub)
    p.subcommands = sub.choices  # name -> its parser, for usage errors in the subcommand's words
    return p


def _end_bars() -> None:
    from sinkhole.progress import end_bars

    end_bars()


def main(argv: list[str] | None = None) -> int:
    # Offline by default: the hub is never contacted, even by a library deep inside transformers.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # refused with the subcommand's usage, not the top-level one
            sub = parser.subcommands.get(args.command) if args.command else None
            (sub or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as err:  # --help (0) or an argparse usage error (2), already printed
        return err.code if isinstance(err.code, int) else 2
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        # Every option is checked before anything is loaded (sinkhole.validate).
        from sinkhole.validate import validate_args

        validate_args(args.command, args)
        from sinkhole.cli.common import announce_load

        announce_load(args)  # the first status line, before the slow imports below
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        from sinkhole.cli.common import configure_threads

        configure_threads(args)
        return int(args.run(args) or 0)
    except SinkholeError as err:
        _end_bars()  # the error starts its own line, never glued to a progress bar
        from sinkhole.distributed import reports, settle

        if reports(err):  # a failure every rank shares is printed by rank 0 alone
            print(f"sinkhole: error: {err}", file=sys.stderr)
        settle(err)
        return 2
    except KeyboardInterrupt:
        _end_bars()
        print("sinkhole: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
