"""Run kv-bench: every (task, length, method) cell over a batch of seeded samples, resumably.

A cell's samples (seeds, and the NIAH depths) share one length, so they run as one batch through one
cache (`sinkhole.kvbench.methods`): the prompt in chunks, then the answer teacher-forced. Dense and
SnapKV read the same dense prompt up to SnapKV's observation window, so when both are due the prefix
is computed once and SnapKV starts from a copy (their seconds both include it: each is what the
method costs alone). Each finished cell is appended to the store at once (`resume.CellStore`).

Dense runs first. Where it fails every sample of an exact-match cell (`dense_failed`), the other
methods are skipped unless `all_cells`: a bounded cache cannot be measured against a reference that
has nothing to keep (docs/cache.md says what that saves). The skipped cells are absent from the
results and named by `results.kvbench.skipped_cells`.

Scores (`score_rows`): exact match (every answer token the top-1 prediction, i.e. what greedy
decoding would write), token accuracy (copy), or the answer tokens' mean nll (ppl).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sinkhole.errors import SinkholeError
from sinkhole.kvbench.methods import (
    LABELS,
    Plan,
    answer_logits,
    base,
    cache_detail,
    chunks,
    dense_bytes,
    kv_bytes_of,
    make_cache,
    prefill,
)
from sinkhole.kvbench.resume import CellStore
from sinkhole.long_tasks import HAYSTACK, METRICS, SEED_BASE, Encoder, Sample, make_samples
from sinkhole.results.kvbench import Cell, CellSample, KVBenchResult, KVModel, KVSettings, dense_failed


@dataclass
class BenchSettings:
    tasks: tuple[str, ...]
    lengths: tuple[int, ...]
    methods: tuple[str, ...]  # variants: 'random:0', 'random:1', ...
    depths: int = 5
    seeds: int = 3
    plan: Plan = field(default_factory=Plan)
    seed_base: int = SEED_BASE  # the first sample's seed: another base draws other samples
    all_cells: bool = False  # run every method even where dense fails every sample (not in `numbers`:
    # it decides which cells run, not what a cell scores)

    def numbers(self, lm, profile=None) -> dict:
        """What decides a cell's numbers (a resumed run must match all of it): the model, the settings
        and the profile's streaming scores (a digest)."""
        import hashlib
        import json

        stream = json.dumps(getattr(profile, "streaming", None), sort_keys=True).encode()
        numbers = dict(
            weights_id=getattr(lm, "weights_id", None) or lm.name,
            profile=hashlib.sha256(stream).hexdigest()[:16],
            dtype=str(lm.dtype).replace("torch.", ""),
            depths=self.depths,
            seeds=self.seeds,
            plan=self.plan.to_dict(),
        )
        if self.seed_base != SEED_BASE:  # only then: records made before --seed-base existed still resume
            numbers["seed_base"] = self.seed_base
        return numbers


def peak_rss_reset() -> bool:
    """Start a new peak-memory window (Linux: writing 5 to /proc/self/clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident bytes since the last reset (VmHWM), or the process's peak where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def batch_tensors(samples: list[Sample], device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """ids (B, L), answers (B, A) padded with each row's last answer id (after the answer, so it
    changes no scored prediction), and each row's answer length."""
    A = max(len(s.answer) for s in samples)
    ids = torch.tensor([s.ids for s in samples], device=device)
    ans = torch.tensor([s.answer + [s.answer[-1]] * (A - len(s.answer)) for s in samples], device=device)
    return ids, ans, [len(s.answer) for s in samples]


def score_rows(logits: torch.Tensor, answers: torch.Tensor, lengths: list[int], metric: str) -> list[float]:
    """Per row: exact match (1.0 / 0.0), token accuracy, or mean nll ('ppl') of its answer tokens.

    logits (B, A, V) predicting answers (B, A); only the first lengths[b] tokens of row b count."""
    pred = logits.argmax(-1)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), answers, reduction="none")
    out = []
    for b, n in enumerate(lengths):
        hit = (pred[b, :n] == answers[b, :n]).float()
        if metric == "exact":
            out.append(float(hit.min()))
        elif metric == "token":
            out.append(float(hit.mean()))
        else:
            out.append(float(nll[b, :n].mean()))
    return out


def answer_nll(model, cache, attention, ids: torch.Tensor, answers: torch.Tensor, lengths: list[int], spans):
    """Per row, the mean nll of its answer tokens with `cache`: the prompt fed in `spans` (`chunks`), the
    answers teacher-forced, under the cache's `attention` context."""
    with attention(model):
        logits = answer_logits(model, cache, prefill(model, cache, ids, spans), answers)
    return score_rows(logits, answers, lengths, "ppl")


def cell_score(metric: str, scores: list[float], lengths: list[int]) -> float:
    import math

    if metric == "ppl":  # the perplexity of every answer token (rows weighted by their tokens)
        return math.exp(sum(s * n for s, n in zip(scores, lengths)) / sum(lengths))
    return sum(scores) / len(scores)


def run_cells(model, profile, plan: Plan, samples: list[Sample], variants: list[str], done: Callable) -> None:
    """Run `variants` on one batch of samples (one task, one length); `done(variant, logits, cache,
    seconds, peak)` gets each method's answer logits as it finishes."""
    device = next(model.parameters()).device
    ids, ans, _ = batch_tensors(samples, device)
    L, A = ids.shape[1], ans.shape[1]
    spans = chunks(L, plan.chunk, plan.snap_window)
    todo = list(variants)
    if "dense" in todo and "snapkv" in todo:  # one dense prefix for both
        todo.remove("snapkv")
        peak_rss_reset()
        t0 = time.perf_counter()
        dense, ctx = make_cache("dense", model, profile, plan, L, A - 1)
        with ctx(model):
            prefill(model, dense, ids, spans[:-1])
        shared = time.perf_counter() - t0
        snap, snap_ctx = make_cache("snapkv", model, profile, plan, L, A - 1)
        snap.load_prefix(dense)
        for name, cache, c in (("dense", dense, ctx), ("snapkv", snap, snap_ctx)):
            t0 = time.perf_counter()
            with c(model):
                last = prefill(model, cache, ids, spans[-1:])
                logits = answer_logits(model, cache, last, ans)
            done(name, logits, cache, shared + time.perf_counter() - t0, peak_rss())
            peak_rss_reset()
        todo.remove("dense")
    for v in todo:
        peak_rss_reset()
        t0 = time.perf_counter()
        cache, ctx = make_cache(v, model, profile, plan, L, A - 1)
        with ctx(model):
            last = prefill(model, cache, ids, spans)
            logits = answer_logits(model, cache, last, ans)
        done(v, logits, cache, time.perf_counter() - t0, peak_rss())


def run_bench(lm, profile, settings: BenchSettings, out, progress=None, log=None, skipped=None) -> KVBenchResult:
    """Every cell of `settings` not already in the store at `out`; returns the whole result (stored
    cells of the same settings included). progress(k): k more cells done; log(cell): a finished cell;
    skipped(task, length, variants): cells not run because dense failed every sample."""
    from sinkhole.validate import integer

    for n in settings.lengths:
        integer(n, "length", lo=64)
    model = lm.model
    numbers = settings.numbers(lm, profile)
    store = CellStore(out, numbers)
    have = store.open()
    enc = Encoder(lm.tokenizer)
    grid = {(t, n, v) for t in settings.tasks for n in settings.lengths for v in settings.methods}
    if progress and grid & set(have):
        progress(len(grid & set(have)))  # cells an earlier run finished
    work = []  # every due cell's samples, and every plan checked before the first forward
    for length in sorted(settings.lengths):
        for task in settings.tasks:
            due = [v for v in settings.methods if (task, length, v) not in have]
            if not due:
                continue
            samples = make_samples(enc, task, length, settings.depths, settings.seeds, settings.seed_base)
            A = max(len(s.answer) for s in samples)
            if lm.max_context and length + A > lm.max_context:
                raise SinkholeError(
                    f"{task} at {length} tokens needs {length + A} with its answer: past {lm.name}'s "
                    f"context of {lm.max_context}"
                )
            for v in due:
                try:
                    make_cache(v, model, profile, settings.plan, length, A - 1)
                except SinkholeError as err:
                    raise SinkholeError(f"{v} at {length} tokens: {err}") from None
            work.append((task, length, samples, due))
    for task, length, samples, due in work:
        n_fed = length + max(len(s.answer) for s in samples) - 1  # the last answer token is only predicted
        dense_b = dense_bytes(model, n_fed)

        def done(variant, logits, cache, seconds, peak, task=task, length=length, samples=samples, dense=dense_b):
            cell = make_cell(task, length, variant, samples, logits, cache, seconds, peak, dense)
            store.add(cell)
            if log:
                log(cell)
            if progress:
                progress(1)

        # gated: dense first (SnapKV with it, sharing its prefix), the rest only if dense found something
        gated = not settings.all_cells and METRICS[task] == "exact" and "dense" in settings.methods
        first = [v for v in due if v in ("dense", "snapkv") and "dense" in due] if gated else due
        run_cells(model, profile, settings.plan, samples, first, done)
        rest = [v for v in due if v not in first]
        if rest and gated and dense_failed(store.cells[(task, length, "dense")]):
            if skipped:
                skipped(task, length, rest)
            if progress:
                progress(len(rest))
            continue
        run_cells(model, profile, settings.plan, samples, rest, done)
    return result_of(lm, settings, list(store.cells.values()), numbers)


def make_cell(task, length, variant, samples, logits, cache, seconds: float, peak: int, dense_b: int) -> Cell:
    """One finished cell from its samples and the method's answer logits (B, A, V)."""
    _, ans, lengths = batch_tensors(samples, "cpu")
    scores = score_rows(logits.cpu(), ans, lengths, METRICS[task])
    held = kv_bytes_of(cache) // len(samples)
    return Cell(
        task=task,
        length=length,
        method=variant,
        label=LABELS[base(variant)] + (f" (seed {variant.split(':')[1]})" if ":" in variant else ""),
        metric=METRICS[task],
        score=round(cell_score(METRICS[task], scores, lengths), 5),
        samples=[CellSample(s.depth, s.seed, s.where, round(v, 5)) for s, v in zip(samples, scores)],
        rows=len(samples),
        kv_bytes=held,
        dense_bytes=dense_b,
        kv_share=round(held / dense_b, 4),
        peak_rss=peak,
        seconds=round(seconds, 2),
        detail=cache_detail(cache),
    )


def result_of(lm, settings: BenchSettings, cells: list[Cell], numbers: dict) -> KVBenchResult:
    order = {m: i for i, m in enumerate(settings.methods)}
    tasks = {t: i for i, t in enumerate(settings.tasks)}
    cells = sorted(cells, key=lambda c: (c.length, tasks.get(c.task, 99), c.task, order.get(c.method, 99), c.method))
    return KVBenchResult(
        model=KVModel(
            name=lm.name,
            weights_id=getattr(lm, "weights_id", None),
            dtype=str(lm.dtype).replace("torch.", ""),
            device=str(lm.device),
        ),
        settings=KVSettings(
            tasks=list(settings.tasks),
            lengths=list(settings.lengths),
            methods=list(settings.methods),
            depths=settings.depths,
            seeds=settings.seeds,
            haystack=HAYSTACK,
            numbers=numbers,
            seed_base=settings.seed_base,
        ),
        cells=cells,
    )
