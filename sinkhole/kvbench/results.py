"""kv-bench's results: typed cells, the summary against the targets, and the store that makes a run
resumable cell by cell.

JSON schema "sinkhole.kvbench/1" (`KVBenchResult.to_dict()`):
    schema, model{name, weights_id, dtype, device}, settings{tasks, lengths, depths, seeds, methods,
    random_seeds, plan{budget, window, local_sinks, rank_by, n_sink, snap_window, snap_kernel, chunk},
    haystack}, cells[{task, length, method, label, metric, score, samples[{depth, seed, where, score}],
    rows, kv_bytes, dense_bytes, kv_share, peak_rss, seconds, detail}], summary (`summarize`)

A cell is one (task, length, method) over all its samples (niah: seeds x depths). score: the mean of
the samples' scores for exact / token accuracy; the perplexity of all answer tokens for ppl (a
sample's score is then its mean nll). kv_bytes: what the cache held at the end, per sequence
(`kv_bytes()` / rows); dense_bytes: dense attention's KV bytes at the same tokens, per sequence;
peak_rss: the process's peak resident memory during the cell (model weights included), bytes;
seconds: wall time of the cell's forwards (all rows).

Store: `OUT.cells.jsonl` next to `--json OUT`, one line per finished cell (fsync'ed), first line the
settings that decide the numbers. A re-run with the same settings skips the cells already there (in
the sidecar or in OUT itself); a run with other settings is refused. The finished run writes OUT
(every stored cell, also those of earlier runs with other tasks, lengths or methods) and removes the
sidecar.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sinkhole.errors import SinkholeError

SCHEMA = "sinkhole.kvbench/1"
RETRIEVAL = ("passkey", "niah", "multikey")  # the tasks the accuracy target averages over
TARGETS = dict(retrieval_ratio=0.9, worst_cell_ratio=0.7, ppl_ratio=1.05)


@dataclass
class Cell:
    task: str
    length: int
    method: str
    label: str
    metric: str
    score: float
    samples: list[dict]
    rows: int
    kv_bytes: int
    dense_bytes: int
    kv_share: float
    peak_rss: int
    seconds: float
    detail: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.task, self.length, self.method)

    @classmethod
    def from_dict(cls, d: dict) -> Cell:
        return cls(**d)


@dataclass
class KVBenchResult:
    model: dict
    settings: dict
    cells: list[Cell]
    schema: str = SCHEMA

    def to_dict(self) -> dict:
        d = asdict(self)
        d["summary"] = summarize(self.cells)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> KVBenchResult:
        if d.get("schema") != SCHEMA:
            raise SinkholeError(f"not a kv-bench result (schema {d.get('schema')!r}, expected {SCHEMA})")
        return cls(d["model"], d["settings"], [Cell.from_dict(c) for c in d["cells"]])


def _mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def _points(cell: Cell) -> dict:
    """The cell's grid points: (depth) -> mean score for niah, one point (None) otherwise."""
    if cell.task != "niah":
        return {None: cell.score}
    by: dict = {}
    for s in cell.samples:
        by.setdefault(s["depth"], []).append(s["score"])
    return {d: _mean(v) for d, v in by.items()}


def summarize(cells: list[Cell]) -> dict:
    """Per method: each task's mean score over lengths, and the issue's targets against dense.

    retrieval_ratio: mean score over the method's passkey / niah / multikey cells divided by dense's
    mean over the same cells; worst_cell_ratio: the lowest method / dense ratio over grid points
    (niah: each length x depth; passkey, multikey: each length) where dense scores above 0;
    ppl_ratio: the highest perplexity ratio to dense over lengths; kv_share: the largest share of
    dense's bytes over the method's cells. 'random' pools its seeds (random:k): mean, and the range
    over seeds of the retrieval ratio. None where dense (or the method) has no such cells."""
    dense = {c.key[:2]: c for c in cells if c.method == "dense"}
    methods: dict[str, list[Cell]] = {}
    for c in cells:
        methods.setdefault(c.method, []).append(c)
    out = {}
    for m, cs in methods.items():
        tasks = {}
        for t in sorted({c.task for c in cs}):
            tasks[t] = _mean(c.score for c in cs if c.task == t)
        pairs = [(c, dense[c.key[:2]]) for c in cs if c.key[:2] in dense]
        ret = [(c.score, d.score) for c, d in pairs if c.task in RETRIEVAL]
        dense_ret = _mean(d for _, d in ret)
        ratio = None if not ret or not dense_ret else _mean(s for s, _ in ret) / dense_ret
        worst = []
        for c, d in pairs:
            if c.task in RETRIEVAL:
                mine, ref = _points(c), _points(d)
                worst += [mine[k] / ref[k] for k in ref if k in mine and ref[k] > 0]
        ppl = [c.score / d.score for c, d in pairs if c.task == "ppl" and d.score > 0]
        out[m] = dict(
            tasks=tasks,
            retrieval_ratio=ratio,
            worst_cell_ratio=min(worst) if worst else None,
            ppl_ratio=max(ppl) if ppl else None,
            kv_share=max(c.kv_share for c in cs),
            seconds=sum(c.seconds for c in cs),
        )
    seeds = sorted(m for m in out if m.startswith("random:"))
    if seeds:
        r = [out[m]["retrieval_ratio"] for m in seeds if out[m]["retrieval_ratio"] is not None]
        pooled = dict(seeds=len(seeds), retrieval_ratio_range=[min(r), max(r)] if r else None)
        for k in ("retrieval_ratio", "worst_cell_ratio", "ppl_ratio", "kv_share", "seconds"):
            vals = [out[m][k] for m in seeds if out[m][k] is not None]
            pooled[k] = _mean(vals) if k != "seconds" else sum(vals)
        tasks = sorted({t for m in seeds for t in out[m]["tasks"]})
        pooled["tasks"] = {t: _mean(out[m]["tasks"][t] for m in seeds if t in out[m]["tasks"]) for t in tasks}
        out["random"] = pooled
    return dict(methods=out, targets=TARGETS, retrieval_tasks=list(RETRIEVAL))


class CellStore:
    """Finished cells of one run's settings, in `--json OUT` and its sidecar `OUT.cells.jsonl`."""

    def __init__(self, out: str | Path, numbers: dict):
        self.out = Path(out)
        self.sidecar = self.out.with_name(self.out.name + ".cells.jsonl")
        self.numbers = numbers
        self.cells: dict[tuple, Cell] = {}

    def _refuse(self, where: Path, theirs: dict) -> None:
        diff = sorted(k for k in set(theirs) | set(self.numbers) if theirs.get(k) != self.numbers.get(k))
        raise SinkholeError(
            f"{where} holds kv-bench cells made with other settings ({', '.join(diff)}): "
            "give another --json path, or delete it to start over"
        )

    def open(self) -> dict[tuple, Cell]:
        """Read what earlier runs of the same settings finished; refuse other settings."""
        if self.out.is_file():
            try:
                d = json.loads(self.out.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise SinkholeError(f"--json {self.out} exists and is not a kv-bench result ({err})") from None
            if not isinstance(d, dict) or d.get("schema") != SCHEMA:
                raise SinkholeError(f"--json {self.out} exists and is not a kv-bench result: give another path")
            if d["settings"].get("numbers") != self.numbers:
                self._refuse(self.out, d["settings"].get("numbers") or {})
            for c in d["cells"]:
                cell = Cell.from_dict(c)
                self.cells[cell.key] = cell
        if self.sidecar.is_file():
            lines = self.sidecar.read_bytes().split(b"\n")
            try:
                head = json.loads(lines[0])
            except ValueError:
                head = {}
            if head.get("numbers") != self.numbers:
                self._refuse(self.sidecar, head.get("numbers") or {})
            for line in lines[1:]:
                try:
                    cell = Cell.from_dict(json.loads(line))
                except (ValueError, TypeError):
                    continue  # the last line cut short by a kill: that cell runs again
                self.cells[cell.key] = cell
        return self.cells

    def _write_line(self, obj: dict, mode: str = "ab") -> None:
        data = (json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n").encode()
        try:
            with open(self.sidecar, mode) as f:
                if mode == "ab" and f.tell() and not self._ends_in_newline():
                    f.write(b"\n")  # after a line cut short by a kill
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            raise SinkholeError(f"cannot write {self.sidecar}: {err.strerror or err}") from None

    def _ends_in_newline(self) -> bool:
        with open(self.sidecar, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def add(self, cell: Cell) -> None:
        if not self.sidecar.is_file():  # written with the first cell: a run refused early leaves nothing
            self._write_line({"numbers": self.numbers}, mode="wb")
        self.cells[cell.key] = cell
        self._write_line(asdict(cell))

    def finish(self) -> None:
        """After OUT was written: the sidecar's cells are all in it."""
        self.sidecar.unlink(missing_ok=True)
