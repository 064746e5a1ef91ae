"""A mask file over many texts: streamed in batches, resumable, sharded under a launcher, one .npz at the end.

Layout while running (beside OUT.npz): `OUT.npz.parts/` holds `run.json` (the settings that decide
the numbers: model weights, texts hash, MaskSettings; the same manifest idea as eval's run.json)
and one `batch-NNNNNN.npz` per finished batch (NNNNNN: the smallest text index it holds; a text is
written once, so names never collide), each written atomically (temporary file + rename), so a
kill loses at most the batches in flight. A re-run with the same settings skips the texts already
in the parts; other settings are refused (eval's comparison, sinkhole.distributed.differences, so
the message reads the same). When every text is done the parts are joined into OUT.npz (atomic)
and the parts directory is removed.

Batches are planned over all texts (eval's plan_batches), also when resuming: a batch with a text
missing runs whole and keeps only what is new, so every text is computed in the batch of an
uninterrupted run and its numbers are the same to the last bit (the batch shape changes float
rounding). Under a launcher (sinkhole.distributed) that plan is cut into balanced shards of whole
batches (by padded tokens); every rank writes its parts into the same directory and rank 0 joins
them when all are done. Whatever world size wrote the parts, a resumed run reads them all, so a
run killed with N ranks resumes with any other number and writes the same OUT.npz byte for byte
(`npz_bytes` fixes the zip timestamps that np.savez would take from the clock).

OUT.npz: `header` (JSON: schema, model, texts, settings), `offsets` (N + 1,) int64, and the
`TokenMask` fields concatenated over texts in input order: text i is [offsets[i], offsets[i+1]).
Read it with `load_mask(path)`.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sinkhole.distributed import World, differences, restrict
from sinkhole.errors import SinkholeError
from sinkhole.mask.compute import FIELDS, MaskSettings, TokenMask, encode_texts, mask_batch

SCHEMA = "sinkhole.mask/1"
MANIFEST = "run.json"
LOCK = ".lock"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip entry can hold; any fixed time would do


def parts_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def pack(masks: list[TokenMask]) -> dict[str, np.ndarray]:
    """Masks -> offsets + concatenated fields (the file layout)."""
    lengths = [len(m) for m in masks]
    arrays = {"offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)}
    for f in FIELDS:
        arrays[f] = np.concatenate([getattr(m, f) for m in masks]) if masks else np.zeros(0)
    return arrays


def unpack(arrays, i: int) -> TokenMask:
    a, b = int(arrays["offsets"][i]), int(arrays["offsets"][i + 1])
    return TokenMask(**{f: arrays[f][a:b] for f in FIELDS})


class MaskFile:
    """A finished mask file: `header` (dict), len() texts, [i] -> TokenMask, `arrays` (the raw layout)."""

    def __init__(self, header: dict, arrays: dict[str, np.ndarray]):
        self.header, self.arrays = header, arrays

    def __len__(self) -> int:
        return len(self.arrays["offsets"]) - 1

    def __getitem__(self, i: int) -> TokenMask:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return unpack(self.arrays, i % len(self))


def load_mask(path: str | Path) -> MaskFile:
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            arrays = {k: z[k] for k in z.files if k != "header"}
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise SinkholeError(f"{path} is not a sinkhole mask file ({err})") from None
    if header.get("schema") != SCHEMA:
        raise SinkholeError(f"{path} is not a sinkhole mask file (schema {header.get('schema')!r})")
    return MaskFile(header, arrays)


def npz_bytes(**arrays) -> bytes:
    """np.savez_compressed's file (np.load reads it), with every member's timestamp fixed: the same
    arrays give the same bytes whenever and by whichever process they are written."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    return buf.getvalue()


def manifest(probe, suite, settings: MaskSettings) -> dict:
    info = probe.info
    return {
        "schema": SCHEMA,
        "model": {
            "name": info.name,
            "architecture": info.architecture,
            "weights_id": info.weights_id,
            "dtype": info.dtype,
        },
        "texts": _texts(suite),
        "settings": settings.to_dict(),
    }


def _texts(suite) -> dict:
    return {"source": suite.source, "sha256": suite.sha256, "count": len(suite)}


def early_manifest(suite, settings: MaskSettings, model: str, device: str, dtype: str | None) -> dict:
    """The part of `manifest` known before the model loads (eval's early_manifest for a mask run)."""
    from sinkhole.models.dtypes import default_dtype
    from sinkhole.models.registry import resolve

    out = {"model": {"name": resolve(model).name}, "texts": _texts(suite), "settings": settings.to_dict()}
    if device != "auto":
        out["model"]["dtype"] = dtype or default_dtype(device)
    return out


def check_existing(out: str | Path, partial: dict) -> None:
    """Refuse, before a model loads, a run whose parts directory holds other settings than `partial`
    (the early manifest); run_mask compares the whole manifest later, and reports an unreadable one."""
    parts = parts_dir(out)
    try:
        old = json.loads((parts / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    diff = differences(restrict(old, partial), partial) if isinstance(old, dict) else []
    if diff:
        raise SinkholeError(_other_settings(parts, diff))


def _other_settings(parts: Path, diff: list[str]) -> str:
    return f"{parts} holds a run with other settings ({'; '.join(diff[:3])}); use another --npz or delete {parts}"


def out_lock(out: str | Path):
    """An exclusive lock on OUT's parts directory for as long as a run writes there (sinkhole.io: gone
    with the process; the same process may take it again, as the CLI and run_mask both do)."""
    from sinkhole.io import exclusive_lock

    parts = parts_dir(out)
    if parts.exists() and not parts.is_dir():
        raise SinkholeError(f"{parts} is a file, not the parts directory of {out}: move it away")
    busy = f"another sinkhole mask is writing {out}: wait for it to finish, or give another --npz"
    return exclusive_lock(parts / LOCK, busy=busy)


def _open(parts: Path, new: dict) -> list[int]:
    """Check (or write) run.json; the indices of the texts already in the parts."""
    from sinkhole.io import write_atomic

    path = parts / MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise SinkholeError(f"{path} is unreadable ({err}); delete {parts} to start over") from None
        diff = differences(old, new)
        if diff:
            raise SinkholeError(_other_settings(parts, diff))
    else:
        write_atomic(path, json.dumps(new, indent=1))
    return sorted(_read_parts(parts, fields=("indices",)))


def _read_parts(parts: Path, fields=None) -> dict[int, TokenMask | None]:
    """Every finished text in the parts: its mask (None with `fields`, which reads only those arrays)."""
    done: dict[int, TokenMask | None] = {}
    for p in sorted(parts.glob("batch-*.npz")):
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in (fields or z.files)}
        except (OSError, ValueError, KeyError) as err:
            raise SinkholeError(f"{p} is corrupt ({err}); delete it and run again") from None
        for j, index in enumerate(arrays["indices"]):
            done.setdefault(int(index), None if fields else unpack(arrays, j))
    return done


def run_mask(
    probe,
    suite,
    out: str | Path,
    settings: MaskSettings,
    max_batch_tokens: int = 4096,
    max_batch: int = 32,
    progress: Callable[[int], None] | None = None,
    initial: Callable[[int], None] | None = None,
    world: World | None = None,
) -> MaskFile | None:
    """Masks of every text in `suite` (sinkhole.eval.suite: .txt / .jsonl) into `out`; resumes a run
    that was cut off. progress(n) after each batch (texts done: all ranks' under a launcher, on rank 0),
    initial(n) once (texts already done; rank 0). world: the ranks sharing the run (sinkhole.distributed;
    default this process alone); every rank calls run_mask with its own probe, rank 0 returns the
    MaskFile and the others None."""
    from contextlib import ExitStack

    world = world or World()
    out = Path(out)
    parts = parts_dir(out)
    settings = settings.checked(probe.info.n_layers)
    new = manifest(probe, suite, settings)
    # Every rank compares before any forward: same texts, settings and model weights, and the same
    # batching, which decides the batch each text is computed in.
    world.agree({**new, "batching": [max_batch_tokens, max_batch]}, "run settings")
    with ExitStack() as stack:
        world.all_ok(lambda: stack.enter_context(out_lock(out)), main_only=True)
        done = set(world.broadcast(world.all_ok(lambda: _open(parts, new), main_only=True)))
        if world.launched:
            world.all_ok(lambda: _sees(parts))
        if initial is not None and world.is_main:
            initial(len(done))
        encoded = world.all_ok(lambda: encode_texts(probe, [it.prompt for it in suite.items], settings))
        _compute(probe, suite, parts, settings, encoded, done, max_batch_tokens, max_batch, progress, world)
        if not world.is_main:
            return None
        masks = _read_parts(parts)
        missing = [it.index for it in suite.items if it.index not in masks]
        if missing:  # every rank said it finished, yet rank 0 cannot read its parts
            raise SinkholeError(
                f"{len(missing)} texts are not in {parts} although every rank finished: --npz must be on a "
                "filesystem every rank sees; run the same command again to compute them"
            )
        arrays = pack([masks[it.index] for it in suite.items])
        try:
            from sinkhole.io import write_atomic

            write_atomic(out, npz_bytes(header=np.array(json.dumps(new)), **arrays))
        except OSError as err:
            raise SinkholeError(
                f"cannot write {out} ({err.strerror or err}); every batch is safe in {parts}: "
                "free space and run the same command again"
            ) from None
        shutil.rmtree(parts, ignore_errors=True)
    return MaskFile(new, arrays)


def _compute(probe, suite, parts, settings, encoded, done, max_batch_tokens, max_batch, progress, world) -> None:
    """This rank's share of the batches not yet done, one part file per batch; returns when every rank
    is done (rank 0 reports all ranks' texts meanwhile)."""
    from sinkhole.eval.runner import plan_batches
    from sinkhole.io import write_atomic

    lengths = [len(ids) for ids in encoded]
    items = suite.items
    todo = [
        b for b in plan_batches(lengths, max_batch_tokens, max_batch) if any(items[i].index not in done for i in b)
    ]
    mine = [todo[k] for k in world.shard([len(b) * lengths[b[0]] for b in todo])]  # padded tokens
    tally = world.tally(progress)
    for batch in mine:
        masks = mask_batch(probe, [encoded[i] for i in batch], settings)
        new = [(items[i].index, m) for i, m in zip(batch, masks) if items[i].index not in done]
        indices = np.array([index for index, _ in new], dtype=np.int64)
        try:
            write_atomic(
                parts / f"batch-{indices.min():06d}.npz", npz_bytes(indices=indices, **pack([m for _, m in new]))
            )
        except OSError as err:
            raise SinkholeError(
                f"cannot write into {parts} ({err.strerror or err}); the batches written so far are "
                "kept: free space and run the same command again to resume"
            ) from None
        tally.step(len(new))
    tally.wait()


def _sees(parts: Path) -> None:
    if not (parts / MANIFEST).is_file():
        raise SinkholeError(
            f"{parts / MANIFEST}, written by rank 0, is not there: --npz must be on a filesystem every rank "
            "sees (NFS, Lustre, ...), or run on one machine"
        )
