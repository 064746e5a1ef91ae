"""Long natural text that every machine has: Python's own documentation (`pydoc_data.topics`).

Perplexity measurements (interventions, streaming, quantization) and calibration read it when the
user gives no text file, so nothing is downloaded and numbers are reproducible: the topics are
joined in sorted key order.
"""

from __future__ import annotations

from pathlib import Path

from sinkhole.errors import SinkholeError

SOURCE = "pydoc_data.topics (sorted keys, joined)"


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
