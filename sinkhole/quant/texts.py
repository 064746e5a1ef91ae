"""Calibration and held-out token sequences.

Both come from Python's own documentation (`pydoc_data.topics.topics`, present in every CPython),
so nothing is downloaded. The topics are sorted by name and split in two disjoint halves: the
calibration text is the first half (its first `n x length` tokens), the held-out text for perplexity
is the second half. A user's `--calib FILE` replaces the calibration text; the held-out text stays
the built-in one unless `--heldout FILE` is given.
"""

from __future__ import annotations

from pathlib import Path

from sinkhole.errors import SinkholeError
from sinkhole.text import pydoc_text, read_text_file

BUILTIN = "builtin"


def read_text(source: str | Path, which: int = 0) -> str:
    """'builtin' (half `which` of the Python topics) or the contents of a text file."""
    if str(source) == BUILTIN:
        return pydoc_text(half=which)
    return read_text_file(source, what="calibration text" if which == 0 else "held-out text")


def token_sequences(tokenizer, text: str, n: int, length: int) -> list[list[int]]:
    """Up to `n` consecutive, non-overlapping `length`-token slices of `text` (no special tokens)."""
    if n < 1 or length < 2:
        raise SinkholeError("need at least one sequence of at least 2 tokens")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if callable(tokenizer) else tokenizer.encode(text)
    seqs = [list(ids[i : i + length]) for i in range(0, len(ids) - length + 1, length)][:n]
    if not seqs:
        raise SinkholeError(f"text has {len(ids)} tokens, fewer than one sequence of {length}")
    return seqs


def calibration_sequences(tokenizer, source: str | Path = BUILTIN, n: int = 8, length: int = 256) -> list[list[int]]:
    return token_sequences(tokenizer, read_text(source, which=0), n, length)


def heldout_sequences(tokenizer, source: str | Path = BUILTIN, n: int = 4, length: int = 512) -> list[list[int]]:
    return token_sequences(tokenizer, read_text(source, which=1), n, length)
