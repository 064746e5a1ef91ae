"""Arguments and helpers shared by subcommands."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

from sinkhole.errors import SinkholeError
from sinkhole.models.registry import DEFAULT_MODEL


class _OldSpelling(argparse.Action):
    """An old spelling of an option: sets the new option's `dest` and says on stderr what to type
    instead (rank 0 alone under a launcher)."""

    def __init__(self, option_strings, dest, instead: str = "", **kw):
        self.instead = instead
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        from sinkhole.distributed import quiet

        if not quiet():
            command = parser.prog.removeprefix("sinkhole ")
            print(
                f"sinkhole: note: {command} {option_string} is now {self.instead} "
                '(the old spelling goes in the next release; docs/cli.md, "Output flags")',
                file=sys.stderr,
            )
        setattr(namespace, self.dest, values)


def add_old_spellings(g, *flags: str, dest: str, instead: str, **kw) -> None:
    """Keep `flags`, an option's spellings before the output-flag convention (docs/cli.md, "Output
    flags"), for one release: hidden from --help, each use prints a one-line notice; `kw` as the new
    option's (type, metavar)."""
    g.add_argument(*flags, dest=dest, action=_OldSpelling, instead=instead, help=argparse.SUPPRESS, **kw)


def add_model_args(p: argparse.ArgumentParser, sharded: bool = False) -> None:
    """--model, --device, --dtype, ...; `sharded`: the command shares its work among the ranks of a
    launcher (sinkhole.distributed), so a rank may own a group of GPUs."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="bundled short name (smollm2-135m, gemma3-270m), local model directory, cached hub id, or .gguf file",
    )
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto (accelerate device_map across GPUs)")
    g.add_argument(
        "--dtype", default=None, help="float32, bfloat16, float16 (default: float32 on CPU, bfloat16 on CUDA)"
    )
    g.add_argument("--trust-remote-code", action="store_true", help="allow model code shipped with the weights")
    add_threads_arg(g)
    if sharded:
        g.add_argument(
            "--gpus-per-rank",
            type=int,
            default=1,
            metavar="K",
            help="under torchrun / accelerate launch with --device cuda or auto: each rank owns K GPUs of its "
            "machine (local rank r takes GPUs rK .. rK+K-1) and spreads its model over them, for a model "
            "that does not fit one GPU (default 1)",
        )


def add_threads_arg(g) -> None:
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: the physical cores, at most 8, less those other jobs keep busy "
        "now; OMP_NUM_THREADS, when set, is respected)",
    )


def busy_cpus(samples: int = 5, interval: float = 0.01) -> int | None:
    """CPUs that other processes keep busy right now: the median count of runnable tasks in
    /proc/loadavg over a few samples, less this process. None where there is no /proc (not Linux).

    An instantaneous count rather than the load average, which also remembers this user's own
    previous command and would make back-to-back runs choose fewer threads."""
    import statistics
    import time

    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)  # the reader is runnable too
        except (OSError, ValueError, IndexError):
            return None
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, int(statistics.median(counts)))


def default_threads(cpus: int | None, physical: int, busy: int | None = 0) -> int:
    """The free cores: physical cores (capped at 8) less the CPUs other jobs keep busy, at least 1.

    Measured on a 2-CPU VM (BENCHMARKS.md, "CPU threads"): quiet, 2 threads ran a SmolLM2 probe
    forward 1.7x faster than 1; shared with jobs that kept both CPUs busy, 4x (512 tokens) to 17x
    (32 tokens) slower, because oversubscribed OpenMP threads spin-wait at every matmul. The cap of 8
    is a guess (no larger machine was available)."""
    n = max(1, min(physical or 1, 8))
    if cpus and busy:
        n = min(n, cpus - busy)
    return max(1, n)


def configure_threads(args) -> int | None:
    """Apply --threads (or the default) to torch; called once by `sinkhole.cli.main` before a command runs."""
    import os

    if not hasattr(args, "threads"):
        return None  # a command that runs no model (models, compare)
    n = args.threads
    from sinkhole.distributed import placement

    where = placement()
    if n is None and where.launched:
        # torchrun sets OMP_NUM_THREADS=1 for every rank; a rank's share of the cores is the default instead
        n = where.cpu_threads()
    if n is None and os.environ.get("OMP_NUM_THREADS"):
        return None  # the user chose through the environment; torch already follows it
    import torch

    if n is None:
        n = default_threads(os.cpu_count(), torch.get_num_threads(), busy_cpus())
    torch.set_num_threads(n)
    if n > 1:
        one_malloc_arena()
    return n


M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def one_malloc_arena() -> bool:
    """Ask glibc for one malloc arena, as MALLOC_ARENA_MAX=1 would; the command owns its process.

    Why: glibc gives each thread that allocates its own arena, and an arena keeps what its thread
    freed. The probe's worker threads each free a score block per query block, so every arena holds
    one: measured with SmolLM2, 2 threads, peak RSS 1506 MB at T = 4096 with per-thread arenas and
    1356 MB with one (plain forward: 1243 MB), at the same speed (BENCHMARKS.md). A user's own
    MALLOC_ARENA_MAX wins; other C libraries (musl, macOS) have no such arenas and are left alone."""
    import ctypes
    import os

    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompt")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--prompt", help="prompt text")
    x.add_argument("--prompt-file", type=Path, help="read the prompt from a file")
    add_chat_args(g)


def add_chat_args(g) -> None:
    g.add_argument(
        "--chat",
        dest="chat",
        action="store_true",
        default=None,
        help="apply the tokenizer's chat template (default: when it has one)",
    )
    g.add_argument("--no-chat", dest="chat", action="store_false")


def add_analysis_args(p: argparse.ArgumentParser, sink_rate: bool = True) -> None:
    """The definitions' parameters (sinkhole.analysis.core), with the same defaults everywhere."""
    from sinkhole.analysis.defaults import DEFAULT_EPSILON, DEFAULT_MIN_SINK_RATE, DEFAULT_THRESHOLD

    g = p.add_argument_group("analysis")
    g.add_argument(
        "--threshold", type=float, default=DEFAULT_THRESHOLD, help="spike score threshold (x median), default 10"
    )
    g.add_argument(
        "--epsilon", type=float, default=DEFAULT_EPSILON, help="attention mass counted as sinking a head, default 0.3"
    )
    if sink_rate:
        g.add_argument(
            "--min-sink-rate",
            type=float,
            default=DEFAULT_MIN_SINK_RATE,
            help="share of heads a sink token must hold, default 0.5",
        )


def read_prompt(args) -> str:
    if args.prompt_file is not None:
        try:
            text = args.prompt_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SinkholeError(f"prompt file not found: {args.prompt_file}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise SinkholeError(f"cannot read prompt file {args.prompt_file}: {err}") from None
    elif args.prompt is not None:
        text = args.prompt
    else:
        raise SinkholeError("give a prompt with --prompt TEXT or --prompt-file FILE")
    if not text.strip():
        raise SinkholeError("empty prompt")
    return text


def load_probe(args, **kw):
    from sinkhole.probe.probe import ModelProbe

    return ModelProbe(
        args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code, log=status, **kw
    )


_ANNOUNCED: set[str] = set()  # status lines already printed early, by announce_load


def load_locked(stack, args, world, out_lock, check_existing, early):
    """The probe of a resumable run that writes `args.out`: rank 0 first takes the output's lock (held in
    `stack`) and checks what the output holds against `early` (settings), so a second writer or another
    run's output is refused before the model loads; then every rank loads the model on its own device."""
    world.all_ok(lambda: stack.enter_context(out_lock(args.out)), main_only=True)
    world.all_ok(lambda: check_existing(args.out, early), main_only=True)
    rank_args = argparse.Namespace(**{**vars(args), "device": world.device})
    return world.all_ok(lambda: load_probe(rank_args))


def status(msg: str) -> None:
    """Progress and status lines go to stderr, so stdout stays the result (rank 0's alone under a launcher)."""
    from sinkhole.distributed import quiet

    if quiet():
        return
    if msg in _ANNOUNCED:  # load_model's own "loading ..." line, said before torch was imported
        _ANNOUNCED.discard(msg)
        return
    print(msg, file=sys.stderr, flush=True)


def announce_load(args) -> None:
    """Print the "loading M (device, dtype) ..." line first, before torch and transformers are
    imported (seconds: the user should not wait on a silent terminal). A command opts in with
    `set_defaults(announce_load=True)` when loading the model is the first thing it does; load_model
    later prints the same line through `status`, which then drops it. `--device auto` is said by
    load_model alone: which device it means is known only once torch can ask for CUDA."""
    from sinkhole.models.dtypes import default_dtype
    from sinkhole.models.registry import resolve

    if not getattr(args, "announce_load", False) or args.device == "auto":
        return
    source = resolve(args.model)  # an unknown model is refused here, before the slow imports
    line = f"loading {source.name} ({args.device}, {args.dtype or default_dtype(args.device)}) ..."
    status(line)
    _ANNOUNCED.add(line)


def write_all(writers) -> list[str]:
    """Run every (path, write) pair whose path is set, even after one fails; returns the failures.

    Each `write()` goes through sinkhole.io.write_output, which rescues data it cannot write; the
    command prints its result and then raises the failures (`raise_failures`)."""
    from sinkhole.io import is_stdout

    failures = []
    for path, write in writers:
        if path is None:
            continue
        try:
            write()
        except SinkholeError as err:
            failures.append(str(err))
            continue
        if not is_stdout(path):
            status(f"wrote {path}")
    return failures


def raise_failures(failures: list[str]) -> None:
    if failures:
        raise SinkholeError("; ".join(failures))


def result_stream(*paths):
    """Where the terminal summary goes: stderr when an output is '-' (stdout then holds that output)."""
    from sinkhole.io import is_stdout

    return sys.stderr if any(is_stdout(p) for p in paths) else sys.stdout


@contextmanager
def resumable_progress(total: int, desc: str, unit: str, where: str):
    """(update, initial) for a resumable run's progress bar: `initial(n)` is told how many items an
    earlier run already finished (in `where`), so the bar starts there and its ETA counts only this
    run's speed. Under torchrun rank 0's bar counts every rank's items."""
    from sinkhole.progress import progress

    bar = progress(total=total, desc=desc, unit=unit)

    def initial(n: int) -> None:
        if n:
            status(f"resuming: {n} of {total} {unit}s already in {where}")
            bar.n = bar.last_print_n = bar.initial = n
            bar.refresh()

    try:
        yield bar.update, initial
    finally:
        bar.close()
