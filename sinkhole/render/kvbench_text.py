"""The terminal table of a kv-bench run: per length, one row per method with each task's score and
the KV bytes held as a share of dense; then each method's numbers against the issue's targets."""

from __future__ import annotations

from sinkhole.results.kvbench import RETRIEVAL, TARGETS, Cell, KVBenchResult, PooledSummary, skipped_cells


def fmt_score(metric: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if metric == "ppl" else f"{v:.0%}"


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]


def length_table(cells: list[Cell], length: int, tasks: list[str], methods: list[str]) -> list[str]:
    by = {(c.task, c.method): c for c in cells if c.length == length}
    head = ["method"] + [f"{t} ({'ppl' if t == 'ppl' else 'acc'})" for t in tasks] + ["KV vs dense", "seconds"]
    rows = [head]
    for m in methods:
        mine = [by.get((t, m)) for t in tasks]
        if not any(mine):
            continue
        shares = [c.kv_share for c in mine if c]
        secs = sum(c.seconds for c in mine if c)
        rows.append(
            [m] + [fmt_score(c.metric, c.score) if c else "-" for c in mine] + [f"{max(shares):.0%}", f"{secs:.0f}"]
        )
    return _table(rows)


def render_kvbench(result: KVBenchResult) -> str:
    cells = result.cells
    s = result.settings
    tasks = [t for t in s.tasks if any(c.task == t for c in cells)]
    tasks += sorted({c.task for c in cells} - set(tasks))
    methods = list(dict.fromkeys(list(s.methods) + [c.method for c in cells]))
    out = [
        f"kv-bench  {result.model.name}  budget {s.budget:.0%} of dense KV bytes  "
        f"depths {s.depths}  seeds {s.seeds}{'' if s.seed_base is None else f' from {s.seed_base}'}  ({s.dtype})",
        f"haystack  {s.haystack}",
    ]
    for length in sorted({c.length for c in cells}):
        out += ["", f"{length} tokens"] + length_table(cells, length, tasks, methods)
    skipped = skipped_cells(cells, s.methods)
    if skipped:
        out += [
            "",
            "not run (dense failed every sample, so a cache has nothing to keep; --all-cells runs them): "
            + ", ".join(f"{t} {n}" for t, n in skipped),
        ]
    summ = result.summary().methods
    out += [
        "",
        "against dense (targets for head-aware: retrieval >= "
        f"{TARGETS['retrieval_ratio']}x, no cell < {TARGETS['worst_cell_ratio']}x, ppl <= {TARGETS['ppl_ratio']}x)",
    ]
    rows = [["method", f"{'/'.join(RETRIEVAL)} vs dense", "worst cell", "ppl vs dense", "max KV share"]]
    for m, d in summ.items():
        if m == "dense" or (m.startswith("random:") and "random" in summ):
            continue
        ratio = fmt_ratio(d.retrieval_ratio)
        if isinstance(d, PooledSummary) and d.retrieval_ratio_range:
            lo, hi = d.retrieval_ratio_range
            ratio += f" ({lo:.2f}-{hi:.2f}, {d.seeds} seeds)"
        rows.append([m, ratio, fmt_ratio(d.worst_cell_ratio), fmt_ratio(d.ppl_ratio), f"{d.kv_share:.0%}"])
    out += _table(rows)
    return "\n".join(out)
