"""Long natural text that every machine has: Python's own documentation (`pydoc_data.topics`).

Perplexity measurements (interventions, streaming, quantization) and calibration read it when the
user gives no text file, so nothing is downloaded and numbers are reproducible: the topics are
joined in sorted key order.
"""

from __future__ import annotations

from pathlib import Path

from sinkhole.errors import SinkholeError

SOURCE = "pydoc_data.topics (sorted keys, joined)"
# The halves' roles, the same everywhere: calibration (quantization's calibration text, the profiles'
# streaming scores) reads half 0; evaluation (held-out perplexity, `stream --recall`, kv-bench) half 1.
CALIBRATION_HALF, HELD_OUT_HALF = 0, 1


def pydoc_source(half: int | None = None) -> str:
    """What `pydoc_text(half)` is, in words, for results to record."""
    if half is None:
        return SOURCE
    which = "first" if half == 0 else "second"
    return f"pydoc_data.topics, {which} half of the sorted keys (sinkhole.text.pydoc_text(half={half}))"


def pydoc_text(half: int | None = None) -> str:
    """All topics joined; `half` 0 or 1 gives one of two disjoint halves (calibration vs held-out)."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    if half is not None:
        keys = keys[: len(keys) // 2] if half == 0 else keys[len(keys) // 2 :]
    return "\n\n".join(topics[k] for k in keys)


def read_text_file(path: str | Path, what: str = "text") -> str:
    """A UTF-8 text file's contents, with one-line errors for missing, unreadable or empty files."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SinkholeError(f"{what} file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SinkholeError(f"cannot read {what} file {path}: {err}") from None
    if not text.strip():
        raise SinkholeError(f"{what} file {path} is empty")
    return text
