"""Runs past one process: rank discovery, the process group, sharding, agreement checks, the wait.

Launchers start the processes (`torchrun`, `accelerate launch`, `srun torchrun ...`); sinkhole only
reads what they set (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and
lets torch.distributed carry the few small messages a run needs. Outside a launcher `World()` is
rank 0 of 1: every method below is then a plain function call, so a command has one code path.

What travels between ranks is small (settings to compare, which rows are done, the counts shown by
rank 0's progress bar, a vocabulary sweep's peak norms, a lab variant's result); an eval's rows go to
one shard file per rank in the output directory, which therefore must be on a filesystem every rank
sees (a local disk on one machine; NFS, Lustre, ... across machines).

Design decisions:
- Every rank runs the same steps in the same order; a step that can fail on one rank (a model file
  missing there, a lock held) goes through `all_ok`, so that every rank stops with the same one line
  instead of the others waiting for a rank that left.
- Work is sharded by cost (`balanced_shards`: longest processing time first), so ranks finish
  together; what each item is (a batch, a token range, a variant) is the command's business.
- A rank that dies makes the others stop within bounded time: under torchrun the agent terminates
  the group (we turn its SIGTERM into one line); otherwise `wait_all` gives up when no rank has made
  progress for `timeout` seconds (SINKHOLE_DIST_TIMEOUT, default 1800), and the collectives fail
  fast on a closed connection or after the process group's timeout.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from sinkhole.errors import SinkholeError

DEFAULT_TIMEOUT = 1800.0  # seconds without any rank's progress before a waiting rank gives up
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


class RankError(SinkholeError):
    """A failure every rank raises with the same text (one rank failed, the others stop with it):
    only rank 0 prints it, so a run prints one line however many ranks it has."""


def _env_int(env, name: str, default: int) -> int:
    value = env.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise SinkholeError(f"{name}={value!r} is not an integer (set by the launcher?)") from None


@dataclass(frozen=True)
class Placement:
    """Where a process sits: rank r of world_size, local_rank of local_world_size on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls, env=None) -> Placement:
        """What torchrun / accelerate launch set; rank 0 of 1 when none of it is there."""
        env = os.environ if env is None else env
        world = _env_int(env, "WORLD_SIZE", 1)
        p = cls(
            rank=_env_int(env, "RANK", 0),
            world_size=world,
            local_rank=_env_int(env, "LOCAL_RANK", 0),
            local_world_size=_env_int(env, "LOCAL_WORLD_SIZE", world),
        )
        if not (0 <= p.rank < p.world_size and 0 <= p.local_rank < p.local_world_size <= p.world_size):
            raise SinkholeError(
                f"inconsistent launcher variables RANK={p.rank} WORLD_SIZE={p.world_size} "
                f"LOCAL_RANK={p.local_rank} LOCAL_WORLD_SIZE={p.local_world_size}"
            )
        return p

    @property
    def launched(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str, gpus_per_rank: int = 1) -> str:
        """The device of this rank: `cuda` / `auto` become cuda:LOCAL_RANK under a launcher (`auto`: the
        CPU on a machine without CUDA, as outside a launcher). A rank that owns a group of GPUs
        (`gpus_per_rank` > 1, made visible by `claim_gpus`) spreads its model over them: `auto`."""
        if not self.launched or device == "cpu":
            return device
        if device not in ("auto", "cuda"):
            raise SinkholeError(
                f"--device {device} under a launcher: give --device cuda (rank r takes cuda:LOCAL_RANK) or cpu"
            )
        import torch

        if device == "auto" and not torch.cuda.is_available():
            return "cpu"
        return "auto" if gpus_per_rank > 1 else f"cuda:{self.local_rank}"

    def gpu_group(self, gpus_per_rank: int, visible: str | None = None) -> list[str]:
        """The GPUs this rank owns when each holds `gpus_per_rank`: local ranks take consecutive groups
        of the machine's visible GPUs (`visible`: CUDA_VISIBLE_DEVICES as the launcher left it)."""
        ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else None
        first = self.local_rank * gpus_per_rank
        need = self.local_world_size * gpus_per_rank
        if ids is not None and len(ids) < need:
            raise SinkholeError(
                f"--gpus-per-rank {gpus_per_rank} with {self.local_world_size} ranks on this machine needs "
                f"{need} GPUs; CUDA_VISIBLE_DEVICES lists {len(ids)}"
            )
        group = range(first, first + gpus_per_rank)
        return [ids[i] for i in group] if ids is not None else [str(i) for i in group]

    def cpu_threads(self, cores: int | None = None) -> int:
        """This rank's share of the machine's physical cores, so N ranks do not oversubscribe it."""
        return max(1, (cores or physical_cores()) // self.local_world_size)


def physical_cores() -> int:
    """Physical cores this process may use (one per (package, core id) in /proc/cpuinfo, within
    the affinity mask); the logical CPU count where that cannot be read."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        allowed = set(range(os.cpu_count() or 1))
    try:
        cores, cpu, package = set(), None, "0"
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    package = value
                elif key == "core id" and cpu in allowed:
                    cores.add((package, value))
        return len(cores) or len(allowed)
    except (OSError, ValueError):
        return len(allowed) or 1


def balanced_shards(costs: Sequence[float], n: int) -> list[list[int]]:
    """Indices of `costs` split into `n` shards of near-equal total cost (largest first to the
    least-loaded shard; ties go to the lower shard and the lower index, so every rank computes the
    same split). Each shard's indices are in ascending order."""
    loads = [0.0] * n
    shards: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        s = min(range(n), key=lambda s: (loads[s], s))
        shards[s].append(i)
        loads[s] += costs[i]
    return [sorted(s) for s in shards]


def timeout_seconds(env=None) -> float:
    env = os.environ if env is None else env
    value = env.get("SINKHOLE_DIST_TIMEOUT")
    try:
        return float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise SinkholeError(f"SINKHOLE_DIST_TIMEOUT={value!r} is not a number of seconds") from None


class World:
    """The ranks of this run and the few operations they do together (see the module docstring)."""

    def __init__(self, placement: Placement | None = None, timeout: float | None = None, device: str = "cpu"):
        self.placement = placement or Placement()
        self.device = device  # this rank's device, as load_model takes it (session() decides it)
        self.timeout = timeout_seconds() if timeout is None else timeout
        self._store = None
        self._key = 0
        self._prefix = "sinkhole"  # session() makes it unique per job (a restarted job keeps its store)
        self._local: dict[str, int] = {}  # the counters of a world of one

    # --- who -----------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.placement.rank

    @property
    def size(self) -> int:
        return self.placement.world_size

    @property
    def is_main(self) -> bool:
        return self.placement.is_main

    @property
    def launched(self) -> bool:
        return self.placement.launched

    # --- collectives (plain calls when alone) ------------------------------------------------------
    def _collective(self, fn):
        import torch.distributed as dist

        try:
            return fn(dist)
        except SinkholeError:
            raise
        except Exception as err:  # noqa: BLE001  gloo / NCCL errors have no common type
            first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
            raise SinkholeError(
                f"rank {self.rank} of {self.size}: lost contact with another rank ({first[:160]}); "
                "what was written so far is kept: run the same command again to resume"
            ) from None

    def gather(self, obj) -> list:
        """obj of every rank, in rank order, on every rank."""
        if not self.launched:
            return [obj]
        out: list = [None] * self.size
        self._collective(lambda dist: dist.all_gather_object(out, obj))
        return out

    def broadcast(self, obj):
        """Rank 0's obj on every rank."""
        if not self.launched:
            return obj
        box = [obj if self.is_main else None]
        self._collective(lambda dist: dist.broadcast_object_list(box, src=0))
        return box[0]

    def all_ok(self, fn: Callable[[], object], main_only: bool = False):
        """Run fn (on rank 0 only with main_only); if it raises a SinkholeError on any rank, every rank
        raises a RankError with that rank's line, so that no rank waits for one that left."""
        error = None
        result = None
        if self.is_main or not main_only:
            try:
                result = fn()
            except SinkholeError as err:
                if not self.launched:
                    raise
                error = str(err)
        if not self.launched:
            return result
        errors = self.gather(error)
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if failed:
            r, e = failed[0]
            alike = main_only or (len(failed) == self.size and len(set(errors)) == 1)
            raise RankError(e if alike else f"rank {r} of {self.size}: {e}")
        return result

    def agree(self, value: dict, what: str = "settings") -> None:
        """Stop every rank (one line) unless all ranks hold the same `value` (a JSON-like dict)."""
        if not self.launched:
            return
        values = self.gather(value)
        for r, v in enumerate(values):
            if v != values[0]:
                diff = "; ".join(differences(values[0], v)[:3])
                raise RankError(
                    f"rank {r} of {self.size} disagrees with rank 0 on the {what} ({diff}); nothing was run"
                )

    def shard(self, costs: Sequence[float]) -> list[int]:
        """This rank's share of the items with these costs (see balanced_shards)."""
        return balanced_shards(costs, self.size)[self.rank]

    # --- progress and the final wait -----------------------------------------------------------------
    def _kv(self):
        if self._store is None:
            from torch.distributed import distributed_c10d

            self._store = distributed_c10d._get_default_store()
        return self._store

    def new_counter(self) -> str:
        """A fresh counter name (every rank calls this in the same order, so the names agree)."""
        self._key += 1
        return f"{self._prefix}/{self._key}"

    def add(self, counter: str, n: int) -> int:
        """Add n to a counter shared by all ranks; returns its new total (all ranks' sum)."""
        if not self.launched:
            self._local[counter] = self._local.get(counter, 0) + n
            return self._local[counter]
        return int(self._collective(lambda dist: self._kv().add(counter, n)))

    def tally(self, progress: Callable[[int], None] | None = None) -> Tally:
        """A fresh shared count of finished work: `step(n)` on any rank; rank 0's progress(k) hears of
        every increase of all ranks' total; `wait()` is wait_all on it."""
        return Tally(self, self.new_counter(), progress)

    def wait_all(self, counter: str, on_progress: Callable[[int], None] | None = None, poll: float = 0.5) -> None:
        """Mark this rank finished and wait until every rank is; rank 0 keeps reporting the shared
        `counter` meanwhile. Gives up with one line when the counter has not moved for `timeout` seconds
        while some rank is unfinished (a rank that died outside a launcher that stops the group)."""
        if not self.launched:
            return
        done_key = counter + "/finished"
        finished = self.add(done_key, 1)
        last, since = None, time.monotonic()
        while finished < self.size:
            count = self.add(counter, 0)
            if count != last:
                last, since = count, time.monotonic()
                if on_progress is not None:
                    on_progress(count)
            elif time.monotonic() - since > self.timeout:
                raise SinkholeError(
                    f"rank {self.rank} of {self.size}: {self.size - finished} rank(s) made no progress for "
                    f"{self.timeout:.0f} s (SINKHOLE_DIST_TIMEOUT); stopping. What was written so far is kept: "
                    "run the same command again to resume"
                )
            time.sleep(poll)
            finished = self.add(done_key, 0)
        if on_progress is not None:
            on_progress(self.add(counter, 0))


class Tally:
    """See World.tally."""

    def __init__(self, world: World, counter: str, progress: Callable[[int], None] | None):
        self.world, self.counter, self.progress, self.shown = world, counter, progress, 0

    def _show(self, total: int) -> None:
        if self.progress is not None and self.world.is_main and total > self.shown:
            self.progress(total - self.shown)
            self.shown = total

    def step(self, n: int) -> None:
        self._show(self.world.add(self.counter, n))

    def wait(self) -> None:
        self.world.wait_all(self.counter, self._show)


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key a -> b' for every leaf where two nested dicts differ (long strings shortened)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            show = lambda v: f"{v[:12]}..." if isinstance(v, str) and len(v) > 24 else repr(v)  # noqa: E731
            out.append(f"{prefix}{k} {show(a)} -> {show(b)}")
    return out


def restrict(d: dict, keys: dict) -> dict:
    """`d` cut down to the keys of `keys` (nested): the part of a stored manifest that an early
    check (before the model loads, so without what only the model tells) can compare."""
    out = {}
    for k, v in keys.items():
        sub = d.get(k)
        out[k] = restrict(sub, v) if isinstance(v, dict) and isinstance(sub, dict) else sub
    return out


_current: World | None = None


def current() -> World:
    """The World of this process (rank 0 of 1 until `session` starts one)."""
    return _current or World()


def placement() -> Placement:
    return current().placement if _current is not None else Placement.from_env()


def quiet() -> bool:
    """Whether this process should keep its status lines to itself (a rank other than 0)."""
    try:
        return not placement().is_main
    except SinkholeError:
        return False


def reports(err: BaseException) -> bool:
    """Whether this process prints `err`: a RankError only on rank 0 (every rank raises the same one)."""
    return not (isinstance(err, RankError) and quiet())


def _on_sigterm(signum, frame):
    """torchrun's answer to a failed rank is SIGTERM to the others: one line, then exit at once (no
    traceback from wherever the signal landed; every row written so far was fsync'ed with its newline)."""
    p = placement()
    sys.stderr.write(
        f"sinkhole: rank {p.rank} of {p.world_size} stopped by the launcher (another rank failed or the job "
        "was cancelled); what was written so far is kept: run the same command again to resume\n"
    )
    sys.stderr.flush()
    os._exit(128 + signal.SIGTERM)


def settle(err: BaseException) -> None:
    """Called by the CLI as a rank exits on `err`: a rank that leaves the printing of a shared failure
    to rank 0 waits a moment first, because the launcher stops the whole group as soon as any rank exits."""
    if not reports(err):
        time.sleep(1.0)


@contextmanager
def session(device: str = "cpu", gpus_per_rank: int = 1):
    """The World of this run: under a launcher, a process group (NCCL when this rank's device is a
    GPU, gloo otherwise) that is torn down on the way out; otherwise rank 0 of 1, nothing started.
    `world.device` is this rank's device: cuda:LOCAL_RANK, or with `gpus_per_rank` > 1 the rank's own
    group of GPUs (only those made visible to it) with the model spread over them."""
    global _current
    p = Placement.from_env()
    if not p.launched:
        yield World(p, device=device)
        return
    if gpus_per_rank > 1 and device in ("cuda", "auto"):
        # before anything asks CUDA how many devices it has: the driver reads this once
        group = p.gpu_group(gpus_per_rank, os.environ.get("CUDA_VISIBLE_DEVICES"))
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(group)
    import torch
    import torch.distributed as dist

    world = World(p, device=p.device(device, gpus_per_rank))
    backend = "gloo"
    if world.device != "cpu" and torch.cuda.is_available():
        if gpus_per_rank > 1 and torch.cuda.device_count() < gpus_per_rank:
            raise SinkholeError(
                f"rank {p.rank}: --gpus-per-rank {gpus_per_rank} but only {torch.cuda.device_count()} of its GPUs "
                f"({os.environ['CUDA_VISIBLE_DEVICES']}) are usable"
            )
        torch.cuda.set_device(0 if gpus_per_rank > 1 else p.local_rank)
        backend = "nccl"
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise SinkholeError(
            f"WORLD_SIZE={p.world_size} but {' and '.join(missing)} unset: start sinkhole with torchrun "
            "or accelerate launch (docs/eval.md)"
        )
    # torch.distributed.nn binds group.WORLD into its functions' defaults when first imported, and
    # transformers imports it while loading a model: imported after init, it keeps the group alive past
    # destroy_process_group, and at exit gloo's threads free tensors without the GIL (SIGABRT,
    # "terminate called without an active exception")
    import torch.distributed.nn  # noqa: F401

    dist.init_process_group(backend, timeout=timedelta(seconds=world.timeout))
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _current = world
    try:
        # torchrun --max-restarts keeps the key-value store of a failed attempt: counters get fresh names
        world._prefix = "sinkhole/" + world.broadcast(uuid.uuid4().hex if world.is_main else None)
        yield world
        # every rank done before any tears the group down, so no rank's exit cuts a peer's last collective
        dist.barrier()
    finally:
        _current = None
        signal.signal(signal.SIGTERM, previous)
        if dist.is_initialized():
            dist.destroy_process_group()
