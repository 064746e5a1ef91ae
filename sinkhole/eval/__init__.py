"""Batch evaluation over prompt suites (`sinkhole eval`): is a model's sink/spike structure
structural, or prompt-specific?

    suite = load_suite("builtin")                       # sinkhole.eval.suite
    rows = run_eval(probe, suite, "runs/smollm2")       # sinkhole.eval.runner: results.jsonl, resumable
                                                        # (typed rows: sinkhole.results.eval.EvalRow)
    summary = write_summary(rows, "runs/smollm2")       # summary.json (an EvalSummary) and rows.csv

The figures and summary.html are drawn from the rows and the summary by sinkhole.render.eval_figures
and eval_page; `sinkhole.cli.eval_cmd.write_outputs` writes everything, as `sinkhole eval` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from sinkhole.eval.aggregate import summarize
from sinkhole.eval.runner import MANIFEST_NAME, EvalSettings, run_eval
from sinkhole.eval.suite import Suite, SuiteItem, load_suite
from sinkhole.results.eval import EvalRow, EvalSummary, as_rows

__all__ = [
    "EvalRow",
    "EvalSettings",
    "EvalSummary",
    "Suite",
    "SuiteItem",
    "load_suite",
    "run_eval",
    "summarize",
    "write_summary",
]


def write_summary(rows: list[EvalRow | dict], out_dir: str | Path, suite: Suite | None = None) -> EvalSummary:
    """summary.json and rows.csv of the rows in `out_dir`; returns the summary.

    `suite`: the run's suite, for the prompt texts of rows.csv; without it the suite named in run.json is
    read again, and used when it still hashes to the run's (else the prompt column stays empty)."""
    from sinkhole.eval.export import write_csv
    from sinkhole.results.base import write_json

    rows, out = as_rows(rows), Path(out_dir)
    run = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8")) if (out / MANIFEST_NAME).is_file() else {}
    summary = summarize(rows, run)
    write_json(summary.to_dict(), out / "summary.json")  # as a dict: NaN and numpy values made plain, as before
    write_csv(rows, out / "rows.csv", prompt_texts(suite, run, rows))
    return summary


def prompt_texts(suite: Suite | None, run: dict, rows: list[EvalRow]) -> dict[int, str | list[int]]:
    """Suite index -> prompt for `rows`: from `suite`, else from the suite run.json names when its
    items at the rows' indices hash to the run's suite (a file edited since gives no texts)."""
    from sinkhole.errors import SinkholeError

    if suite is None:
        recorded = run.get("suite", {})
        try:
            whole = load_suite(recorded["source"])
        except (KeyError, SinkholeError):
            return {}
        by_index = {it.index: it for it in whole.items}
        picked = [by_index.get(r.index) for r in sorted(rows, key=lambda r: r.index)]
        if None in picked or Suite(whole.source, picked).sha256 != recorded.get("sha256"):
            return {}
        suite = Suite(whole.source, picked)
    return {it.index: it.prompt for it in suite.items}
