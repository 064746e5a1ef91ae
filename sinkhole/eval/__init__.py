"""Batch evaluation over prompt suites (`sinkhole eval`): is a model's sink/spike structure
structural, or prompt-specific?

    suite = load_suite("builtin")                       # sinkhole.eval.suite
    rows = run_eval(probe, suite, "runs/smollm2")       # sinkhole.eval.runner: results.jsonl, resumable
                                                        # (typed rows: sinkhole.eval.rows.EvalRow)
    summary = write_outputs(rows, "runs/smollm2")       # summary.json, rows.csv, PNG figures, summary.html
    print(render_summary(summary))                      # sinkhole.render.eval_text
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


def write_outputs(rows: list[EvalRow], out_dir: str | Path, figures: bool = True, suite: Suite | None = None) -> dict:
    """summary.json, rows.csv (+ PNG figures and summary.html) of the rows in `out_dir`; returns the summary.

    `suite`: the run's suite, for the prompt texts of rows.csv; without it the suite named in run.json is
    read again, and used when it still hashes to the run's (else the prompt column stays empty)."""
    from sinkhole.eval.export import write_csv
    from sinkhole.results.report import write_json

    out = Path(out_dir)
    run = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8")) if (out / MANIFEST_NAME).is_file() else {}
    summary = summarize(rows, run)
    write_json(summary, out / "summary.json")
    write_csv(rows, out / "rows.csv", prompt_texts(suite, run, rows))
    if figures and rows:
        from sinkhole.render.eval_figures import write_figures
        from sinkhole.render.eval_page import write_html
        from sinkhole.render.eval_text import render_summary

        write_figures(rows, summary, out)
        write_html(summary, render_summary(summary), out)
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
        picked = [by_index.get(r["index"]) for r in sorted(rows, key=lambda r: r["index"])]
        if None in picked or Suite(whole.source, picked).sha256 != recorded.get("sha256"):
            return {}
        suite = Suite(whole.source, picked)
    return {it.index: it.prompt for it in suite.items}
