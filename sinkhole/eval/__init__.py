"""Batch evaluation over prompt suites (`sinkhole eval`): is a model's sink/spike structure
structural, or prompt-specific?

    suite = load_suite("builtin")                       # sinkhole.eval.suite
    rows = run_eval(probe, suite, "runs/smollm2")       # sinkhole.eval.runner: results.jsonl, resumable
                                                        # (typed rows: sinkhole.eval.rows.EvalRow)
    summary = write_outputs(rows, "runs/smollm2")       # summary.json, rows.csv, PNG figures, summary.html
    print(render_summary(summary))                      # sinkhole.report.eval_text
"""

from __future__ import annotations

import json
from pathlib import Path

from sinkhole.eval.aggregate import summarize
from sinkhole.eval.rows import EvalRow
from sinkhole.eval.runner import MANIFEST_NAME, EvalSettings, run_eval
from sinkhole.eval.suite import Suite, SuiteItem, load_suite

__all__ = [
    "EvalRow",
    "EvalSettings",
    "Suite",
    "SuiteItem",
    "load_suite",
    "run_eval",
    "summarize",
    "write_outputs",
]


def write_outputs(rows: list[EvalRow], out_dir: str | Path, figures: bool = True) -> dict:
    """summary.json, rows.csv (+ PNG figures and summary.html) of the rows in `out_dir`; returns the summary."""
    from sinkhole.eval.export import write_csv
    from sinkhole.report.schema import write_json

    out = Path(out_dir)
    run = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8")) if (out / MANIFEST_NAME).is_file() else {}
    summary = summarize(rows, run)
    write_json(summary, out / "summary.json")
    write_csv(rows, out / "rows.csv")
    if figures and rows:
        from sinkhole.report.eval_figures import write_figures
        from sinkhole.report.eval_page import write_html
        from sinkhole.report.eval_text import render_summary

        write_figures(rows, summary, out)
        write_html(summary, render_summary(summary), out)
    return summary
