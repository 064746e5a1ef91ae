"""kv-bench's typed result: the cells, the run's settings, and the summary against the targets.

JSON schema "sinkhole.kvbench/1" (`KVBenchResult.to_dict()`; `schema_text(KVBenchResult)` lists it):
    model{name, weights_id, dtype, device}, settings{tasks, lengths, methods, depths, seeds, haystack,
    numbers{weights_id, profile, dtype, depths, seeds, plan{budget, window, local_sinks, rank_by, n_sink,
    snap_window, snap_kernel, chunk, select, ...}, seed_base?}, seed_base?}, cells[{task, length, method,
    label, metric, score,
    samples[{depth, seed, where, score}], rows, kv_bytes, dense_bytes, kv_share, peak_rss, seconds,
    detail}], schema, summary{methods{method: {tasks, retrieval_ratio, worst_cell_ratio, ppl_ratio,
    kv_share, seconds}, random: {seeds, retrieval_ratio_range, retrieval_ratio, ...}}, targets,
    retrieval_tasks}

A cell is one (task, length, method) over all its samples (niah: seeds x depths). score: the mean of
the samples' scores for exact / token accuracy; the perplexity of all answer tokens for ppl (a
sample's score is then its mean nll). kv_bytes: what the cache held at the end, per sequence
(`kv_bytes()` / rows); dense_bytes: dense attention's KV bytes at the same tokens, per sequence;
peak_rss: the process's peak resident memory during the cell (model weights included), bytes;
seconds: wall time of the cell's forwards (all rows). detail: the cache's shape (head-aware: n_sink,
window, local_sinks, retrieval_heads, kv_heads, and with --select the selection and whole_heads, the
heads kept whole beside the retrieval_heads that select; SnapKV: capacity, window, kernel; dense:
empty).
`settings.numbers` is what decides the numbers: a resumed run must match it whole
(sinkhole.kvbench.resume). The summary is derived from the cells whenever the result is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sinkhole.errors import SinkholeError
from sinkhole.results.base import Result, opt

SCHEMA = "sinkhole.kvbench/1"
RETRIEVAL = ("passkey", "niah", "multikey")  # the tasks the accuracy target averages over
TARGETS = dict(retrieval_ratio=0.9, worst_cell_ratio=0.7, ppl_ratio=1.05)


@dataclass
class CellSample(Result):
    """One prompt's score in a cell: where the needle sat (depth 0..1, None for ppl), its seed, the
    answer's index in the prompt (-1 for ppl) and the score (1/0, token accuracy, or mean nll)."""

    depth: float | None
    seed: int
    where: int
    score: float


@dataclass
class Cell(Result):
    task: str
    length: int
    method: str
    label: str
    metric: str
    score: float
    samples: list[CellSample]
    rows: int
    kv_bytes: int
    dense_bytes: int
    kv_share: float
    peak_rss: int
    seconds: float
    detail: dict = field(default_factory=dict, metadata={"map": "{key: n}"})

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.task, self.length, self.method)


@dataclass
class KVModel(Result):
    name: str
    weights_id: str | None
    dtype: str
    device: str


@dataclass
class KVSettings(Result):
    tasks: list[str]
    lengths: list[int]
    methods: list[str]  # variants as the cells run them: 'random:0', 'random:1', ...
    depths: int
    seeds: int
    haystack: str
    numbers: dict = field(
        metadata={
            "keys": "{weights_id, profile, dtype, depths, seeds, plan{budget, window, local_sinks, ...}, "
            "seed_base (when not 1000)}"
        }
    )
    seed_base: int | None = opt("sample i's seed is seed_base + i; absent from records before --seed-base (1000)")

    @property
    def budget(self) -> float:
        """The caches' byte budget as a share of dense's."""
        return self.numbers["plan"]["budget"]

    @property
    def dtype(self) -> str:
        return self.numbers["dtype"]


@dataclass
class MethodSummary(Result):
    """One method against dense (`summarize`); None where dense (or the method) has no such cells."""

    tasks: dict[str, float | None] = field(metadata={"map": "{task: mean score}"})
    retrieval_ratio: float | None
    worst_cell_ratio: float | None
    ppl_ratio: float | None
    kv_share: float
    seconds: float


@dataclass
class PooledSummary(Result):
    """The random-head controls pooled over their seeds: the means, and the retrieval ratio's range."""

    seeds: int
    retrieval_ratio_range: list[float] | None
    retrieval_ratio: float | None
    worst_cell_ratio: float | None
    ppl_ratio: float | None
    kv_share: float | None
    seconds: float
    tasks: dict[str, float | None] = field(metadata={"map": "{task: mean score}"})


@dataclass
class KVSummary(Result):
    methods: dict[str, MethodSummary | PooledSummary] = field(metadata={"map": "{method: {...}}"})
    targets: dict = field(metadata={"keys": "{retrieval_ratio, worst_cell_ratio, ppl_ratio}"})
    retrieval_tasks: list[str]


@dataclass
class KVBenchResult(Result):
    model: KVModel
    settings: KVSettings
    cells: list[Cell]
    schema: str = SCHEMA

    def summary(self) -> KVSummary:
        return summarize(self.cells)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "summary": self.summary().to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> KVBenchResult:
        if d.get("schema") != SCHEMA:
            raise SinkholeError(f"not a kv-bench result (schema {d.get('schema')!r}, expected {SCHEMA})")
        return super().from_dict(d)


def dense_failed(cell: Cell) -> bool:
    """Whether a dense cell says nothing about caches: exact match, and every sample failed."""
    return cell.metric == "exact" and all(s.score == 0 for s in cell.samples)


def skipped_cells(cells: list[Cell], methods: list[str]) -> list[tuple[str, int]]:
    """(task, length) pairs where dense failed every sample and some of `methods` has no cell: what
    kv-bench skips unless --all-cells (sinkhole.kvbench.bench)."""
    have = {c.key for c in cells}
    failed = [c.key[:2] for c in cells if c.method == "dense" and dense_failed(c)]
    return [(t, n) for t, n in failed if any((t, n, m) not in have for m in methods)]


def _mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def _points(cell: Cell) -> dict:
    """The cell's grid points: (depth) -> mean score for niah, one point (None) otherwise."""
    if cell.task != "niah":
        return {None: cell.score}
    by: dict = {}
    for s in cell.samples:
        by.setdefault(s.depth, []).append(s.score)
    return {d: _mean(v) for d, v in by.items()}


def summarize(cells: list[Cell]) -> KVSummary:
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
    out: dict[str, MethodSummary | PooledSummary] = {}
    for m, cs in methods.items():
        tasks = {t: _mean(c.score for c in cs if c.task == t) for t in sorted({c.task for c in cs})}
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
        out[m] = MethodSummary(
            tasks=tasks,
            retrieval_ratio=ratio,
            worst_cell_ratio=min(worst) if worst else None,
            ppl_ratio=max(ppl) if ppl else None,
            kv_share=max(c.kv_share for c in cs),
            seconds=sum(c.seconds for c in cs),
        )
    seeds = [out[m] for m in sorted(m for m in out if m.startswith("random:"))]
    if seeds:
        r = [s.retrieval_ratio for s in seeds if s.retrieval_ratio is not None]

        def pooled_mean(key: str):
            return _mean(v for s in seeds if (v := getattr(s, key)) is not None)

        tasks = sorted({t for s in seeds for t in s.tasks})
        out["random"] = PooledSummary(
            seeds=len(seeds),
            retrieval_ratio_range=[min(r), max(r)] if r else None,
            retrieval_ratio=pooled_mean("retrieval_ratio"),
            worst_cell_ratio=pooled_mean("worst_cell_ratio"),
            ppl_ratio=pooled_mean("ppl_ratio"),
            kv_share=pooled_mean("kv_share"),
            seconds=sum(s.seconds for s in seeds),
            tasks={t: _mean(s.tasks[t] for s in seeds if t in s.tasks) for t in tasks},
        )
    return KVSummary(methods=out, targets=TARGETS, retrieval_tasks=list(RETRIEVAL))
