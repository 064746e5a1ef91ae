"""The converted-GGUF cache: `cache_dir()/gguf/<sha256[:24] of the .gguf>/`, verified, repaired, locked.

transformers dequantizes a GGUF file on every load (15-50 s), so the result is saved once as
safetensors. The cache is not trusted blindly:

- Integrity. At conversion every file's size and sha256 go into `sinkhole-integrity.json`, with a
  stamp (size, mtime, inode) of each file. A load checks sizes, the stamps and each safetensors
  header against its file size (a truncated file fails here): about a millisecond. Only when a
  stamp changed (the file was written, copied or touched) is the file re-hashed and compared with
  its recorded sha256 (1.2 s for Gemma-3's 1.07 GB on the development machine), and the stamp
  renewed when it matches. Entries made before integrity records existed are checked by header and
  sizes, hashed once and recorded (trust on first use).
- Repair. A damaged or incomplete entry is rebuilt from the GGUF, with a one-line notice.
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
from pathlib import Path

from sinkhole.errors import SinkholeError
from sinkhole.io import cache_dir, exclusive_lock, file_sha256, pid_alive, sha256_of, write_atomic

SOURCE_NAME = "sinkhole-source.json"
INTEGRITY_NAME = "sinkhole-integrity.json"
_STALE = re.compile(r"^\..+\.(tmp|old)(\d+)$")


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


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


def entry_problem(entry: Path) -> str | None:
    """None when the cache entry is complete and its files are what was written; else why not."""
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
        record_integrity(entry)  # an entry from before integrity records: hash it once
        return None
    changed = False
    for name, rec in files.items():
        p = entry / name
        if not p.is_file():
            return f"{name} is missing"
        try:
            stamp = _stamp(p)
            if stamp[0] != rec["size"]:
                return f"{name} is {stamp[0]} bytes, {rec['size']} were written"
            if stamp != rec.get("stamp"):
                if sha256_of(p) != rec["sha256"]:
                    return f"{name} changed since it was written (sha256 differs)"
                rec["stamp"], changed = stamp, True
        except (OSError, KeyError, TypeError) as err:
            return f"{name} cannot be checked ({type(err).__name__})"
    if changed:
        _save_record(entry, files)
    return None


def record_integrity(entry: Path) -> None:
    """Record size, sha256 and stamp of every file of an entry."""
    files = {}
    for p in sorted(entry.iterdir()):
        if p.is_file() and p.name != INTEGRITY_NAME:
            files[p.name] = {"size": p.stat().st_size, "sha256": sha256_of(p), "stamp": _stamp(p)}
    _save_record(entry, files)


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


def converted_gguf_dir(gguf: Path, log=print) -> tuple[Path, str]:
    """Directory of safetensors converted from `gguf` (converting on first use), and the file's sha256."""
    gguf = Path(gguf)
    try:
        digest = file_sha256(gguf)
    except OSError as err:
        raise SinkholeError(
            f"cannot read GGUF file {gguf} ({err.strerror or err}): check that it exists and is readable"
        ) from None
    root = cache_dir() / "gguf"
    target = root / digest[:24]
    clean_stale(root)
    if entry_problem(target) is None:
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
        if problem != "missing":
            log(f"the cached conversion {target} is damaged ({problem}): rebuilding it")
        log(f"converting {gguf.name} to safetensors once (cached in {target}) ...")
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
