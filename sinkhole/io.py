"""The one checked output writer, file hashes and file locks. No torch import here, so writers stay cheap.

- `write_atomic(path, data)`: temporary file beside `path`, fsync, rename. Readers never see a
  partial file, and a failed write removes its temporary file.
- `write_output(path, data, what)`: what commands use for their results. `-` means stdout. When
  the write fails after the work is done (disk full, the directory vanished), the result is saved
  to a rescue file (the current directory, else the system temp directory) and the error says
  where, so minutes of computation are never lost. Output paths are checked up front by
  `sinkhole.validate.check_outputs`, so this is the rare case.
- `exclusive_lock(path, what)`: an fcntl lock held for a block; a second process gets a one-line
  SinkholeError (or waits, with `wait=True`). Locks vanish with the process, even on kill -9.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

from sinkhole.errors import SinkholeError

STDOUT = "-"


def cache_dir() -> Path:
    """`$SINKHOLE_CACHE`, else `$XDG_CACHE_HOME/sinkhole`, else `~/.cache/sinkhole`."""
    if os.environ.get("SINKHOLE_CACHE"):
        d = Path(os.environ["SINKHOLE_CACHE"]).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        d = Path(base) / "sinkhole"
    if d.exists() and not d.is_dir():
        raise SinkholeError(
            f"the sinkhole cache {d} is a file, not a directory: move it or set SINKHOLE_CACHE to a directory"
        )
    return d


def is_stdout(path) -> bool:
    return path is not None and str(path) == STDOUT


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see a partial file.

    On any failure the temporary file is removed and the OSError propagates; one left by a process
    killed mid-write (its pid is in the name) is removed by the next write of the same file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _remove_stale_temporaries(path: Path) -> None:
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def rescue_path(path: str | Path) -> Path:
    """Where a result that could not be written to `path` goes instead."""
    name = Path(path).name or "sinkhole-output"
    for d in (Path.cwd(), Path(tempfile.gettempdir())):
        if os.access(d, os.W_OK) and d.resolve() != Path(path).resolve().parent:
            return d / f"sinkhole-rescued-{os.getpid()}-{name}"
    return Path(tempfile.gettempdir()) / f"sinkhole-rescued-{os.getpid()}-{name}"


def write_output(path: str | Path, data: str | bytes, what: str = "output") -> str:
    """Write a command's result to `path` (`-`: stdout). Returns a description ('stdout' or the path).

    If the write fails, the data goes to a rescue file and a SinkholeError names both places."""
    if is_stdout(path):
        if isinstance(data, bytes):
            sys.stdout.buffer.write(data)
        else:
            sys.stdout.write(data if data.endswith("\n") else data + "\n")
        sys.stdout.flush()
        return "stdout"
    try:
        write_atomic(path, data)
        return str(path)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        rescue = rescue_path(path)
        try:
            write_atomic(rescue, data)
        except OSError:
            raise SinkholeError(
                f"cannot write {what} {path} ({reason}) nor a rescue copy {rescue}: free space and run again"
            ) from None
        raise SinkholeError(
            f"cannot write {what} {path} ({reason}); the result was saved to {rescue} instead"
        ) from None


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, memoised in the cache by (path, size, mtime) since large GGUFs take seconds."""
    path = Path(path).resolve()
    st = path.stat()
    memo = cache_dir() / "hashes" / (hashlib.sha1(str(path).encode()).hexdigest() + ".json")
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        data = json.loads(memo.read_text())
        if data["key"] == key:
            return data["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_of(path)
    with contextlib.suppress(OSError):  # a read-only cache only costs the memo
        write_atomic(memo, json.dumps({"key": key, "sha256": digest}))
    return digest


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


_HELD: dict[tuple[str, int], int] = {}  # (lock path, thread) -> depth: a thread may re-enter its own lock


@contextlib.contextmanager
def exclusive_lock(path: str | Path, busy: str, wait: bool = False, on_wait=None):
    """Hold an exclusive fcntl lock on the file `path` (created) for the block.

    busy: the one-line message for a second process (when not `wait`). With `wait`, block until the
    lock is free, calling on_wait() once first. The same thread may re-enter its own lock; other
    threads open their own descriptor, which flock treats like another process."""
    key = (str(Path(path).resolve()), threading.get_ident())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise SinkholeError(busy) from None
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
