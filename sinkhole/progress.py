"""Progress for long steps: a tqdm bar on a terminal, plain lines in a log.

tqdm redraws its bar with carriage returns; in a log file (stderr not a terminal) that becomes one
line of hundreds of redraws, and an error printed after it is glued to the bar. `progress(...)`
returns tqdm only when stderr is a terminal; otherwise a `LineProgress` with the same small API
(update, close, n, refresh, set_postfix_str, context manager) that prints one whole line at most
every `every` seconds or each 10% step, and a last line when it closes; a step done within
`quiet_for` seconds prints nothing; under a launcher, ranks other than 0 print none. `end_bars()` finishes any
open bar before the CLI prints an error.
"""

from __future__ import annotations

import sys
import time

_open: list = []


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """tqdm's small API as whole lines: 'desc: 12/40 prompts (30%), 9.1 s, ~21 s left'."""

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        file=None,
        every: float = 30.0,
        quiet_for: float = 2.0,
        **_ignored,
    ):
        self.total, self.desc, self.unit, self.file, self.every = total, desc, unit, file or sys.stderr, every
        self.n = self.initial = self.last_print_n = 0
        self.postfix = ""
        self._t0 = self._last = time.monotonic()
        self._last_step = -1
        self.quiet_for = quiet_for  # steps shorter than this print nothing at all
        self.printed = False
        self.closed = False
        _open.append(self)

    def _line(self) -> str:
        el = time.monotonic() - self._t0
        done = self.n - self.initial
        s = f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"
        if self.total:
            s += f" ({100 * self.n / self.total:.0f}%)"
        s += f", {el:.1f} s"
        if self.total and done > 0 and self.n < self.total:
            s += f", ~{el / done * (self.total - self.n):.0f} s left"
        return s + (f" [{self.postfix}]" if self.postfix else "")

    def _print(self) -> None:
        self.printed = True
        print(self._line(), file=self.file, flush=True)
        self._last, self.last_print_n = time.monotonic(), self.n

    def update(self, k: int = 1) -> None:
        self.n += k
        step = int(10 * self.n / self.total) if self.total else -1
        if time.monotonic() - self._t0 < self.quiet_for:
            return
        if (step != self._last_step and self.total) or time.monotonic() - self._last >= self.every:
            self._last_step = step
            if self.n < (self.total or float("inf")):
                self._print()

    def refresh(self) -> None:
        self._print()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self in _open:
            _open.remove(self)
        if self.printed and self.n != self.last_print_n or time.monotonic() - self._t0 >= self.quiet_for:
            self._print()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int | None = None, desc: str = "", unit: str = "it", leave: bool = True, **kw):
    """A tqdm bar on a terminal, else a LineProgress (see the module docstring)."""
    from sinkhole.distributed import quiet

    file = kw.pop("file", None) or sys.stderr
    if quiet():  # a rank other than 0: rank 0 shows the whole run's progress
        return LineProgress(total=total, desc=desc, unit=unit, file=_Null(), **kw)
    if is_terminal(file):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=file, leave=leave, dynamic_ncols=True, **kw)
    return LineProgress(total=total, desc=desc, unit=unit, file=file, **kw)


class _Null:
    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


def end_bars() -> None:
    """Finish every open bar on its own line, so that a following message starts a fresh line."""
    for bar in list(_open):
        bar.close()
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", [])):
            try:
                bar.leave = True  # a closed bar then ends with a newline rather than a carriage return
                bar.close()
            except Exception:  # a bar that cannot close must not hide the error itself
                pass
    except ImportError:
        pass
