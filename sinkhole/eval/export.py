"""rows.csv: one line per prompt (an `EvalRow`, sinkhole.results.eval), flat, for spreadsheets and pandas.

Lists become space-separated cells (`spike_channels` "507 247 14 100", in the one channel order of
`sinkhole.analysis.core.order_channels`); the prompt's tokens are left out (results.jsonl has them), its
text is the last column (`prompt`, from the suite: rows do not hold it; a prompt given as token ids
is written as space-separated ids; empty where the suite is not known).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from sinkhole.results.eval import EvalRow, as_rows

COLUMNS = [
    "index",
    "category",
    "n_tokens",
    "n_spikes",
    "spike_score",
    "spike_channels",
    "spike_positions",
    "n_sinks",
    "sink_positions",
    "sink_mass",
    "sink_rate",
    "top_sink_position",
    "top_sink_text",
    "n_sink_heads",
    "jaccard",
    "sink_attention_share",
    "prompt",
]


def csv_row(r: EvalRow, prompt: str | list[int] = "") -> dict:
    """The CSV cells of a row and its prompt."""

    def join(xs) -> str:
        return " ".join(str(x) for x in xs)

    return {
        "index": r.index,
        "category": r.category,
        "n_tokens": r.n_tokens,
        "n_spikes": r.n_spikes,
        "spike_score": r.spike_score,
        "spike_channels": join(r.spike_channels),
        "spike_positions": join(s.position for s in r.spikes),
        "n_sinks": r.n_sinks,
        "sink_positions": join(s.position for s in r.sinks),
        "sink_mass": r.sink_mass,
        "sink_rate": r.sink_rate,
        "top_sink_position": r.top_sink.position,
        "top_sink_text": r.top_sink.text,
        "n_sink_heads": len(r.sink_heads),
        "jaccard": "" if r.jaccard is None else r.jaccard,
        "sink_attention_share": r.sink_attention_share,
        "prompt": prompt if isinstance(prompt, str) else join(prompt),
    }


def rows_csv(rows: list[EvalRow | dict], prompts: dict[int, str | list[int]] | None = None) -> str:
    """The CSV text of `rows` (dicts of the row's keys are typed first), by suite index; `prompts`: suite
    index -> prompt (`SuiteItem.prompt`)."""
    rows = as_rows(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in sorted(rows, key=lambda r: r.index):
        w.writerow(csv_row(r, (prompts or {}).get(r.index, "")))
    return buf.getvalue()


def write_csv(rows: list[EvalRow], path: str | Path, prompts: dict[int, str | list[int]] | None = None) -> Path:
    from sinkhole.io import write_output

    write_output(Path(path), rows_csv(rows, prompts), "rows CSV")
    return Path(path)
