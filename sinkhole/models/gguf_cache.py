"""The converted-GGUF cache: `cache_dir()/gguf/<sha256[:24] of the .gguf>/`, verified, repaired, locked.

transformers dequantizes a GGUF file on every load (15-50 s), so the result is saved once as
safetensors. The cache is not trusted blindly:

- Integrity. At conversion every file's size and content hash (xxh3-128) go into
  `sinkhole-integrity.json`. Every load re-hashes every file and compares: a flipped block is
  caught even when size, mtime and inode are unchanged (what bit rot looks like). xxh3 is not a
  cryptographic hash (it guards against damage, not against someone who rewrites the cache) and
  runs at about the speed the file can be read: 3-5% of a load (BENCHMARKS.md, "Converted-GGUF
  cache"). Each safetensors header is also checked against its file size, so a truncated file
  names itself. Entries written by older versions: one with only a sha256 record is checked
  against it once and gets its xxh3 recorded; one with no record at all (before records existed)
  can only be checked by header and sizes, and is hashed once and recorded (trust on first use).
  Both say so in one notice.
- Repair. A damaged or incomplete entry is rebuilt from the GGUF, with a one-line notice.
  `sinkhole models --verify` checks every entry (`verify_all`) without loading anything.
- Concurrency. Conversion holds an fcntl lock per entry: a second process waits (saying so) and
  then uses the first one's result instead of failing on a half-written folder.
- Interruptions. Conversion writes into `.<entry>.tmp<pid>` and renames it into place; a folder
  left by a killed process (its pid no longer alive) is removed by the next load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from concurrent.futures import Future
from pathlib import Path

from sinkhole.errors import SinkholeError
from sinkhole.io import cache_dir, exclusive_lock, file_sha256, pid_alive, sha256_of, write_atomic

SOURCE_NAME = "sinkhole-source.json"
INTEGRITY_NAME = "sinkhole-integrity.json"
HASH = "xxh3_128"  # the content hash recorded per file (content_hash)
_STALE = re.compile(r"^\..+\.(tmp|old)(\d+)$")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's header or length, or None (reads only the header)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated"
            n = struct.unpack("<Q", head)[0]
            if n > min(size - 8, 1 << 27):
                return f"{path.name} has a damaged header"
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        return f"{path.name} is unreadable ({type(err).__name__})"
    if 8 + n + end != size:
        return f"{path.name} is {size} bytes, its header says {8 + n + end}"
    return None


def content_hash(path: Path) -> str:
    """xxh3-128 of a file's bytes, read in 16 MiB blocks into one reused buffer (hex)."""
    import xxhash

    h = xxhash.xxh3_128()
    buf = bytearray(1 << 24)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def entry_problem(entry: Path, log=None, content: bool = True) -> str | None:
    """None when the cache entry is complete and its files hold what was written; else why not.

    Reads every file once (its content hash); `content=False` checks only presence, sizes and
    headers (milliseconds; `check_content_later` then does the rest). `log` gets the one notice when
    an entry written by an older version has its hash recorded now."""
    if not (entry / "config.json").is_file() or not (entry / SOURCE_NAME).is_file():
        return "incomplete" if entry.exists() else "missing"
    try:
        json.loads((entry / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "config.json is unreadable"
    weights = sorted(entry.glob("*.safetensors"))
    if not weights:
        return "no weights file"
    for w in weights:
        problem = safetensors_problem(w)
        if problem:
            return problem
    try:
        record = json.loads((entry / INTEGRITY_NAME).read_text(encoding="utf-8"))
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        if not content:
            return None
        record_integrity(entry)
        _notice(
            log,
            f"the cached conversion {entry} has no content hash (written by an older sinkhole): "
            "checked by sizes and headers, hash recorded now",
        )
        return None
    adopted = False
    for name, rec in files.items():
        p = entry / name
        if not p.is_file():
            return f"{name} is missing"
        try:
            size = p.stat().st_size
            if size != rec["size"]:
                return f"{name} is {size} bytes, {rec['size']} were written"
            if not content:
                continue
            if HASH in rec:
                if content_hash(p) != rec[HASH]:
                    return f"{name} changed since it was written ({HASH} differs)"
            else:  # a record from before the fast hash: its sha256 checks the file once
                if sha256_of(p) != rec["sha256"]:
                    return f"{name} changed since it was written (sha256 differs)"
                rec[HASH], adopted = content_hash(p), True
        except (OSError, KeyError, TypeError) as err:
            return f"{name} cannot be checked ({type(err).__name__})"
    if adopted:
        _save_record(entry, files)
        _notice(
            log,
            f"the cached conversion {entry} was checked against its sha256 (written by an older "
            f"sinkhole): {HASH} recorded for faster checks",
        )
    return None


def check_content_later(entry: Path, log=None) -> Future:
    """Start `entry_problem(entry)` in a thread and return its Future (problem or None).

    Why a thread: the hash has to read every byte (0.1 s for SmolLM2's 0.54 GB), the load reads
    them too, and most of the load is Python building the model. Reading releases the GIL, so the
    check runs beside the load instead of before it (BENCHMARKS.md, "Converted-GGUF cache")."""
    import threading

    future: Future = Future()

    def work():
        try:
            future.set_result(entry_problem(entry, log))
        except BaseException as err:  # noqa: BLE001  (the caller re-raises it from .result())
            future.set_exception(err)

    threading.Thread(target=work, name="sinkhole-cache-check", daemon=True).start()
    return future


def _notice(log, msg: str) -> None:
    if log is not None:
        log(msg)


def record_integrity(entry: Path) -> None:
    """Record size and content hash of every file of an entry."""
    files = {}
    for p in sorted(entry.iterdir()):
        if p.is_file() and p.name != INTEGRITY_NAME:
            files[p.name] = {"size": p.stat().st_size, HASH: content_hash(p)}
    _save_record(entry, files)


def verify_all(root: Path | None = None, log=None) -> list[dict]:
    """Check every converted entry under `root` (default `cache_dir()/gguf`): [{"dir", "gguf",
    "problem"}], problem None when the entry is sound. Reads every byte; converts nothing."""
    root = root or cache_dir() / "gguf"
    out = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        try:
            src = json.loads((entry / SOURCE_NAME).read_text(encoding="utf-8")).get("gguf")
        except (OSError, ValueError, AttributeError):
            src = None
        out.append({"dir": str(entry), "gguf": src, "problem": entry_problem(entry, log)})
    return out


def _save_record(entry: Path, files: dict) -> None:
    try:
        write_atomic(entry / INTEGRITY_NAME, json.dumps({"files": files}, indent=1))
    except OSError:
        pass  # a read-only cache: the entry is still verified, just again next time


def clean_stale(root: Path) -> list[Path]:
    """Remove temporary folders (and files) left in `root` by processes that no longer run."""
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        m = _STALE.match(name)
        if m and not pid_alive(int(m.group(2))):
            p = root / name
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def convert_into(gguf: Path, out: Path, digest: str) -> None:
    """Dequantize `gguf` with transformers and save model + tokenizer as safetensors into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as err:  # the gguf reader raises many types on a damaged file
        raise SinkholeError(f"cannot read GGUF file {gguf}: {type(err).__name__}: {err}".splitlines()[0]) from err
    # save_pretrained refuses a GGUF-loaded model until its quantizer is dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def entry_dir(digest: str) -> Path:
    """Where the conversion of the .gguf file with this sha256 lives (whether or not it exists yet)."""
    return cache_dir() / "gguf" / digest[:24]


def converted_gguf_dir(gguf: Path, log=print, content: bool = True) -> tuple[Path, str]:
    """Directory of safetensors converted from `gguf` (converting on first use), and the file's sha256.

    `content=False`: an existing entry is checked without its content hashes, which the caller
    then checks itself (`check_content_later`) and, on a mismatch, calls this again."""
    gguf = Path(gguf)
    try:
        digest = file_sha256(gguf)
    except OSError as err:
        raise SinkholeError(
            f"cannot read GGUF file {gguf} ({err.strerror or err}): check that it exists and is readable"
        ) from None
    target = entry_dir(digest)
    root = target.parent
    clean_stale(root)
    if entry_problem(target, log, content=content) is None:
        return target, digest
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SinkholeError(
            f"cannot create the cache {root} ({err.strerror}): set SINKHOLE_CACHE to a writable directory"
        ) from None
    try:
        return _convert_locked(gguf, digest, root, target, log)
    except OSError as err:  # the lock file, the temporary folder or the rename
        raise SinkholeError(
            f"cannot write the converted model to {root} ({err.strerror or err}): "
            "free space or set SINKHOLE_CACHE to a writable directory"
        ) from None


def _convert_locked(gguf: Path, digest: str, root: Path, target: Path, log) -> tuple[Path, str]:
    lock = root / f".{target.name}.lock"
    with exclusive_lock(
        lock,
        busy="",
        wait=True,
        on_wait=lambda: log(f"waiting for another sinkhole process converting {gguf.name} ..."),
    ):
        problem = entry_problem(target)  # another process may have converted it while we waited
        if problem is None:
            return target, digest
        if problem == "missing":
            log(f"converting {gguf.name} to safetensors once (cached in {target}) ...")
        else:
            log(f"the cached conversion {target} is damaged ({problem}): rebuilding it from {gguf.name} ...")
        tmp = root / f".{target.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            convert_into(gguf, tmp, digest)
            (tmp / SOURCE_NAME).write_text(json.dumps({"gguf": str(gguf), "sha256": digest}))
            record_integrity(tmp)
            if target.exists():  # a damaged entry: move it aside first, so the rename is atomic
                old = root / f".{target.name}.old{os.getpid()}"
                os.replace(target, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target, digest
