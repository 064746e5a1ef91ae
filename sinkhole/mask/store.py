"""A mask file over many texts: streamed in batches, resumable, one .npz at the end.

Layout while running (beside OUT.npz): `OUT.npz.parts/` holds `run.json` (the settings that decide
the numbers: model weights, texts hash, MaskSettings; the same manifest idea as eval's run.json)
and one `batch-NNNNNN.npz` per finished batch, each written atomically (temporary file + rename),
so a kill loses at most the batch in flight. A re-run with the same settings skips the texts
already in the parts; other settings are refused (eval's comparison, sinkhole.distributed.differences,
so the message reads the same). When every text is done the parts are joined into OUT.npz (atomic)
and the parts directory is removed.

OUT.npz: `header` (JSON: schema, model, texts, settings), `offsets` (N + 1,) int64, and the
`TokenMask` fields concatenated over texts in input order: text i is [offsets[i], offsets[i+1]).
Read it with `load_mask(path)`.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sinkhole.errors import SinkholeError
from sinkhole.mask.core import FIELDS, MaskSettings, TokenMask, iter_masks

SCHEMA = "sinkhole.mask/1"
MANIFEST = "run.json"


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


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
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
        "texts": {"source": suite.source, "sha256": suite.sha256, "count": len(suite)},
        "settings": settings.to_dict(),
    }


def _done(parts: Path) -> dict[int, TokenMask]:
    done: dict[int, TokenMask] = {}
    for p in sorted(parts.glob("batch-*.npz")):
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise SinkholeError(f"{p} is corrupt ({err}); delete it and run again") from None
        for j, index in enumerate(arrays["indices"]):
            done[int(index)] = unpack(arrays, j)
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
) -> MaskFile:
    """Masks of every text in `suite` (sinkhole.eval.suite: .txt / .jsonl) into `out`; resumes a run
    that was cut off. progress(n) after each batch (texts done), initial(n) once (texts already done)."""
    from sinkhole.distributed import differences
    from sinkhole.io import exclusive_lock, write_atomic

    out = Path(out)
    parts = parts_dir(out)
    settings = settings.checked(probe.info.n_layers)
    new = manifest(probe, suite, settings)
    if parts.exists() and not parts.is_dir():
        raise SinkholeError(f"{parts} is a file, not the parts directory of {out}: move it away")
    parts.mkdir(parents=True, exist_ok=True)
    busy = f"another sinkhole mask is writing {out}: wait for it to finish, or give another --out"
    with exclusive_lock(parts / ".lock", busy=busy):
        path = parts / MANIFEST
        if path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise SinkholeError(f"{path} is unreadable ({err}); delete {parts} to start over") from None
            diff = differences(old, new)
            if diff:
                raise SinkholeError(
                    f"{parts} holds a run with other settings ({'; '.join(diff[:3])}); "
                    f"use another --out or delete {parts}"
                )
        else:
            write_atomic(path, json.dumps(new, indent=1))
        done = _done(parts)
        if initial is not None:
            initial(len(done))
        todo = [it for it in suite.items if it.index not in done]
        prompts = [it.prompt for it in todo]
        n_parts = len(list(parts.glob("batch-*.npz")))
        for batch in iter_masks(probe, prompts, settings, max_batch_tokens, max_batch):
            indices = np.array([todo[i].index for i, _ in batch], dtype=np.int64)
            data = _npz_bytes(indices=indices, **pack([m for _, m in batch]))
            try:
                write_atomic(parts / f"batch-{n_parts:06d}.npz", data)
            except OSError as err:
                raise SinkholeError(
                    f"cannot write into {parts} ({err.strerror or err}); the batches written so far are "
                    "kept: free space and run the same command again to resume"
                ) from None
            n_parts += 1
            done.update((todo[i].index, m) for i, m in batch)
            if progress is not None:
                progress(len(batch))
        masks = [done[it.index] for it in suite.items]
        arrays = pack(masks)
        try:
            write_atomic(out, _npz_bytes(header=np.array(json.dumps(new)), **arrays))
        except OSError as err:
            raise SinkholeError(
                f"cannot write {out} ({err.strerror or err}); every batch is safe in {parts}: "
                "free space and run the same command again"
            ) from None
    shutil.rmtree(parts, ignore_errors=True)
    return MaskFile(new, arrays)
