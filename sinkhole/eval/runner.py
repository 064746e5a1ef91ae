"""Run a probe over a prompt suite: one compact row per prompt, batched, streamed, resumable.

Design:
- Prompts are tokenized once, sorted by length (longest first, so memory peaks early and the ETA
  is pessimistic rather than optimistic) and cut into batches of at most `max_batch` prompts and
  `max_batch_tokens` padded tokens (B x T_max). Sorting keeps padding small; the probe removes
  padding's effect exactly (left padding, masked keys, position ids over real tokens only).
- Each prompt's numbers are those of `sinkhole.analysis.core.analyze` on its own capture;
  `prompt_row` only picks and names them (a typed `EvalRow`, sinkhole.results.eval), it defines no metric.
- `DIR/results.jsonl` gets one JSON line per prompt (`EvalRow.to_dict()`; read back with
  `EvalRow.from_dict`), written per batch and fsync'ed. `DIR/run.json`
  holds the settings that decide the numbers (model weights, suite hash, threshold, epsilon,
  min_sink_rate, chat, top_k); a re-run with the same settings skips the rows already there, a
  re-run with other settings is refused. A last line cut short by a kill is dropped and redone.
- Batches are planned over the whole suite, also when resuming: a batch with a missing row is run
  whole again and only its missing rows are kept, so every prompt is computed in the same batch as
  in an uninterrupted run and its numbers are the same to the last bit (batch shape changes float
  rounding; the thread count does not, tests/test_distributed.py). A finished run rewrites
  results.jsonl in suite order.
- Under a launcher (sinkhole.distributed) the same plan is cut into balanced shards of whole batches
  (by padded tokens); rank r appends to DIR/shards/rank-r.jsonl (rank 0 to results.jsonl) and rank 0
  merges them when all are done. Whatever world size wrote a directory, a resumed run reads every
  shard, so runs killed with N ranks resume with any other number.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from sinkhole.analysis.core import (
    DEFAULT_EPSILON,
    DEFAULT_MIN_SINK_RATE,
    DEFAULT_THRESHOLD,
    analyze,
    order_channels,
    prompt_spike_score,
)
from sinkhole.distributed import World, differences, restrict
from sinkhole.errors import SinkholeError
from sinkhole.eval.suite import Suite, SuiteItem
from sinkhole.results.eval import EvalRow, EvalSink, EvalSpike
from sinkhole.results.report import Report

RUN_SCHEMA = "sinkhole.eval/1"
RESULTS_NAME, MANIFEST_NAME, LOCK_NAME = "results.jsonl", "run.json", ".sinkhole-eval.lock"
SHARDS_DIR = "shards"  # DIR/shards/rank-<r>.jsonl: the rows of ranks other than 0, until rank 0 merges them
DEFAULT_BATCH_TOKENS = 4096  # B x T_max per forward: large enough to amortise Python overhead on a CPU
DEFAULT_MAX_BATCH = 32
MIN_FILL = 0.7  # a prompt joins a batch only if it is at least this share of the batch's longest


@dataclass
class EvalSettings:
    """The settings that decide a row's numbers (all in run.json), plus batching (which does not)."""

    threshold: float = DEFAULT_THRESHOLD
    epsilon: float = DEFAULT_EPSILON
    min_sink_rate: float = DEFAULT_MIN_SINK_RATE
    chat: bool | None = None  # None: the tokenizer's chat template when it has one
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS
    max_batch: int = DEFAULT_MAX_BATCH

    def numbers(self) -> dict:
        d = asdict(self)
        for k in ("max_batch_tokens", "max_batch"):
            d.pop(k)
        return d


def plan_batches(
    lengths: list[int], max_batch_tokens: int, max_batch: int, min_fill: float = MIN_FILL
) -> list[list[int]]:
    """Indices into `lengths`, longest first, cut so each batch has B <= max_batch and B * T_max <= budget.

    A new batch also starts when a prompt is shorter than `min_fill` x the batch's longest, so that
    padding stays under 1 - min_fill of any batch. A prompt longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        cur = batches[-1] if batches else None
        # Sorted descending, so the batch's T_max is its first prompt's length.
        if (
            cur
            and len(cur) < max_batch
            and (len(cur) + 1) * lengths[cur[0]] <= max_batch_tokens
            and lengths[i] >= min_fill * lengths[cur[0]]
        ):
            cur.append(i)
        else:
            batches.append([i])
    return batches


def prompt_row(item: SuiteItem, report: Report) -> EvalRow:
    """One results.jsonl row: the prompt's numbers, all taken from its `analyze` report.

    spike_score = max_t S[t]; sink_mass / sink_rate = those of the top sink (the token of largest
    attention mass); spike_channels = union of the spike tokens' channels; sink_heads = (layer, head)
    pairs whose alpha on the top sink exceeds epsilon; each spike's channel_values = the signed values
    of its spike channels at its top layer (`report.detail`, which `analyze` fills from the Capture).
    """
    sp, sk = report.spikes, report.sinks
    top = sk.top
    heads = np.asarray(report.heads.mass_on_top_sink) > sk.epsilon
    spikes = [EvalSpike.of(s, values) for s, values in zip(sp.tokens, report.detail.spike_channel_values)]
    return EvalRow(
        index=item.index,
        category=item.category,
        n_tokens=len(report.tokens),
        n_spikes=len(spikes),
        spike_score=prompt_spike_score(sp.per_token_score),
        spike_channels=order_channels([s.channels for s in spikes]),
        spikes=spikes,
        n_sinks=len(sk.tokens),
        sink_mass=top.attn_mass,
        sink_rate=top.sink_rate,
        top_sink=EvalSink.of(top),
        sinks=[EvalSink.of(s) for s in sk.tokens],
        sink_heads=[[int(l), int(h)] for l, h in zip(*np.nonzero(heads))],
        jaccard=report.overlap.jaccard,
        sink_attention_share=report.kv.sink_attention_share,
        tokens=[t.text for t in report.tokens],
    )


def evaluate(probe, items: list[SuiteItem], settings: EvalSettings) -> Iterator[list[EvalRow]]:
    """Rows for `items`, one list per batch (in batch order, not index order)."""
    if not items:
        return
    encoded = _encode(probe, items, settings)
    for batch in plan_batches([len(ids) for ids in encoded], settings.max_batch_tokens, settings.max_batch):
        captures = probe.run_batch([encoded[i] for i in batch])
        rows = []
        for i, cap in zip(batch, captures):
            report = analyze(cap, settings.threshold, settings.epsilon, settings.min_sink_rate)
            rows.append(prompt_row(items[i], report))
        yield rows


def resolved_chat(probe, chat: bool | None) -> bool:
    return probe.has_chat_template() if chat is None else bool(chat)


def manifest(probe, suite: Suite, settings: EvalSettings) -> dict:
    info = probe.info
    numbers = settings.numbers()
    numbers["chat"] = resolved_chat(probe, settings.chat)
    return {
        "schema": RUN_SCHEMA,
        "model": {
            "name": info.name,
            "architecture": info.architecture,
            "weights_id": info.weights_id,
            "dtype": info.dtype,
        },
        "suite": {"source": suite.source, "sha256": suite.sha256, "count": len(suite)},
        "settings": {**numbers, "top_k": probe.top_k},
    }


def early_manifest(suite: Suite, settings: EvalSettings, model: str, device: str, dtype: str | None) -> dict:
    """The part of `manifest` known before the model loads (the model's name as resolved, its dtype
    unless --device auto decides it, the suite, the analysis settings); one-line error for a model
    that is not there."""
    from sinkhole.models.dtypes import default_dtype
    from sinkhole.models.registry import resolve

    numbers = settings.numbers()
    if numbers["chat"] is None:
        numbers.pop("chat")  # the tokenizer decides
    out = {
        "model": {"name": resolve(model).name},
        "suite": {"source": suite.source, "sha256": suite.sha256, "count": len(suite)},
        "settings": numbers,
    }
    if device != "auto":
        out["model"]["dtype"] = dtype or default_dtype(device)
    return out


def check_existing(out_dir: str | Path, partial: dict) -> None:
    """Refuse at once, before a model loads, an --out whose run.json disagrees with `partial` (the part of
    the manifest known without the model: suite, analysis settings, model name). ResultsStore.open checks
    the whole manifest later; an unreadable run.json is left for it to report."""
    path = Path(out_dir) / MANIFEST_NAME
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    diff = differences(restrict(old, partial), partial) if isinstance(old, dict) else []
    if diff:
        raise SinkholeError(_other_settings(Path(out_dir), diff))


def _other_settings(out: Path, diff: list[str]) -> str:
    return (
        f"{out} holds a run with other settings ({'; '.join(diff[:3])}); "
        "use another --out directory or delete this one"
    )


def out_lock(out_dir: str | Path):
    """An exclusive lock on an eval directory for as long as a run writes there (fcntl: gone with the
    process, even after kill -9). A second process gets a one-line SinkholeError; the same process
    may take it again (the CLI holds it around `run_eval`, which takes it too)."""
    from sinkhole.io import exclusive_lock

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SinkholeError(f"--out {out} is a file, not a directory")
    return exclusive_lock(
        out / LOCK_NAME,
        busy=f"another sinkhole eval is writing to {out}: wait for it to finish, or give another --out directory",
    )


class ResultsStore:
    """DIR/run.json + DIR/results.jsonl (+ DIR/shards/rank-<r>.jsonl under a launcher), append-only,
    crash-tolerant. `rank` chooses the file this process appends to; reads cover every file."""

    def __init__(self, out_dir: str | Path, rank: int = 0):
        self.dir = Path(out_dir)
        self.results = self.dir / RESULTS_NAME
        self.manifest_path = self.dir / MANIFEST_NAME
        self.shards = self.dir / SHARDS_DIR
        self.own = self.results if rank == 0 else self.shards / f"rank-{rank}.jsonl"

    def files(self) -> list[Path]:
        shards = sorted(self.shards.glob("rank-*.jsonl")) if self.shards.is_dir() else []
        return [p for p in [self.results, *shards] if p.is_file()]

    def open(self, new_manifest: dict) -> dict[int, EvalRow]:
        """Check (or write) the manifest and return the rows already done, keyed by prompt index."""
        from sinkhole.io import write_atomic

        if self.dir.exists() and not self.dir.is_dir():
            raise SinkholeError(f"--out {self.dir} is a file, not a directory")
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.manifest_path.is_file():
            try:
                old = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise SinkholeError(f"{self.manifest_path} is unreadable ({err}); use another --out") from None
            diff = differences(old, new_manifest)
            if diff:
                raise SinkholeError(_other_settings(self.dir, diff))
        elif any(p.stat().st_size for p in self.files()):
            raise SinkholeError(f"{self.results} exists without {MANIFEST_NAME}; use another --out directory")
        else:
            write_atomic(self.manifest_path, json.dumps(new_manifest, indent=1, ensure_ascii=False))
        return self.read_rows()

    def read_lines(self) -> dict[int, bytes]:
        """Each complete row's line (bytes, newline included) by index, over every file; the first of
        duplicates wins. A last line without its newline (a write cut by a kill) is cut off its file;
        a line that is not a complete row is refused as corrupt."""
        lines: dict[int, bytes] = {}
        for path in self.files():
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                with open(path, "r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
            for lineno, line in enumerate(data[:end].splitlines(keepends=True), 1):
                if not line.strip():
                    continue
                try:
                    index = int(EvalRow.from_dict(json.loads(line)).index)
                except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                    raise SinkholeError(f"{path}:{lineno} is corrupt; use another --out directory") from None
                lines.setdefault(index, line)
        return lines

    def read_rows(self) -> dict[int, EvalRow]:
        """Complete rows by index, typed again (`EvalRow.from_dict`); see read_lines."""
        return {i: EvalRow.from_dict(json.loads(line)) for i, line in self.read_lines().items()}

    def append(self, rows: list[EvalRow]) -> None:
        text = "".join(json.dumps(r.to_dict(), ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
        self.own.parent.mkdir(parents=True, exist_ok=True)
        with open(self.own, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def merge(self, order: list[int]) -> None:
        """results.jsonl := every row, in `order` (the suite's), each line exactly as written; then the
        shards go. A kill in between leaves rows in both places, which a resumed run reads once."""
        from sinkhole.io import write_atomic

        lines = self.read_lines()
        data = b"".join(lines[i] for i in order if i in lines)
        shards = [p for p in self.files() if p != self.results]
        if not self.results.is_file() or self.results.read_bytes() != data:
            write_atomic(self.results, data)
        for p in shards:
            p.unlink()
        if self.shards.is_dir() and not any(self.shards.iterdir()):
            self.shards.rmdir()


def run_eval(
    probe,
    suite: Suite,
    out_dir: str | Path | None,
    settings: EvalSettings | None = None,
    progress: Callable[[int], None] | None = None,
    initial: Callable[[int], None] | None = None,
    world: World | None = None,
) -> list[EvalRow]:
    """Evaluate `suite`; with `out_dir`, stream rows to it and resume what is there. Returns rows by index.

    progress(n) is called after each batch with the number of prompts finished since the last call (all
    ranks' under a launcher, on rank 0); initial(n) once with the number already done (rank 0).
    world: the ranks sharing the run (sinkhole.distributed; default: this process alone). Every rank
    calls run_eval with its own probe; rank 0 returns every row, the other ranks an empty list.
    """
    world = world or World()
    settings = settings or EvalSettings()
    settings = replace(settings, chat=resolved_chat(probe, settings.chat))  # the caller's object is left as is
    from sinkhole.validate import analysis_params

    analysis_params(settings.threshold, settings.epsilon, settings.min_sink_rate)
    if out_dir is None:
        return _run(probe, suite, None, settings, progress, initial, world)
    with ExitStack() as stack:
        world.all_ok(lambda: stack.enter_context(out_lock(out_dir)), main_only=True)
        return _run(probe, suite, out_dir, settings, progress, initial, world)


def _run(probe, suite, out_dir, settings, progress, initial, world) -> list[EvalRow]:
    run = manifest(probe, suite, settings)
    # Every rank compares before any forward: same suite, settings and model weights (and batching,
    # which decides the batches each prompt is computed in).
    world.agree({**run, "batching": [settings.max_batch_tokens, settings.max_batch]}, "run settings")
    store = ResultsStore(out_dir, world.rank) if out_dir is not None else None

    def open_store() -> list[int]:
        done = store.open(run)
        stray = set(done) - {it.index for it in suite.items}
        if stray:
            raise SinkholeError(f"{store.results} holds rows for prompts not in this suite (index {min(stray)})")
        return sorted(done)

    done = set(world.broadcast(world.all_ok(open_store, main_only=True)) if store is not None else [])
    if store is not None and world.launched:
        world.all_ok(lambda: _sees(store))
    if initial is not None and world.is_main:
        initial(len(done))
    encoded = world.all_ok(lambda: _encode(probe, suite.items, settings))
    lengths = [len(ids) for ids in encoded]
    todo = [
        b
        for b in plan_batches(lengths, settings.max_batch_tokens, settings.max_batch)
        if any(suite.items[i].index not in done for i in b)
    ]
    mine = [todo[k] for k in world.shard([len(b) * lengths[b[0]] for b in todo])]  # padded tokens
    tally = world.tally(progress)  # rank 0 hears of every rank's rows
    computed: dict[int, EvalRow] = {}
    for batch in mine:
        captures = probe.run_batch([encoded[i] for i in batch])
        rows = []
        for i, cap in zip(batch, captures):
            if suite.items[i].index not in done:  # a batch cut short by a kill runs whole, keeps what is new
                report = analyze(cap, settings.threshold, settings.epsilon, settings.min_sink_rate)
                rows.append(prompt_row(suite.items[i], report))
        if store is not None:
            try:
                store.append(rows)
            except OSError as err:
                raise SinkholeError(
                    f"cannot append to {store.own} ({err.strerror or err}); the rows written so far "
                    "are kept: free space and run the same command again to resume"
                ) from None
        else:
            computed.update((r.index, r) for r in rows)  # in memory only without a directory to hold them
        tally.step(len(rows))
    tally.wait()
    order = [it.index for it in suite.items]
    if store is None:
        everything = {}
        for part in world.gather(computed):
            everything.update(part)
        return [everything[i] for i in order] if world.is_main else []
    if not world.is_main:
        return []
    store.merge(order)
    rows = store.read_rows()
    missing = [i for i in order if i not in rows]
    if missing:  # every rank said it finished, yet rank 0 cannot read its rows
        raise SinkholeError(
            f"{len(missing)} rows are not in {store.dir} although every rank finished: --out must be on a "
            "filesystem every rank sees; run the same command again to compute them"
        )
    return [rows[i] for i in order]


def _sees(store: ResultsStore) -> None:
    if not store.manifest_path.is_file():
        raise SinkholeError(
            f"{store.manifest_path}, written by rank 0, is not there: --out must be on a filesystem every rank "
            "sees (NFS, Lustre, ...), or run on one machine"
        )


def _encode(probe, items: list[SuiteItem], settings: EvalSettings) -> list[list[int]]:
    encoded = [probe.encode(it.prompt, settings.chat)[0] for it in items]
    limit = probe.info.max_context
    for it, ids in zip(items, encoded):
        if limit and len(ids) > limit:
            raise SinkholeError(
                f"prompt {it.index} is {len(ids)} tokens, longer than {probe.info.name}'s context of {limit}"
            )
    return encoded
