"""kv-bench's resumable store: finished cells of one run's settings, cell by cell.

`OUT.cells.jsonl` next to `--json OUT`, one line per finished cell (fsync'ed), first line the
settings that decide the numbers (`KVSettings.numbers`). A re-run with the same settings skips the
cells already there (in the sidecar or in OUT itself); a run with other settings is refused. The
finished run writes OUT (every stored cell, also those of earlier runs with other tasks, lengths or
methods) and removes the sidecar. The cells and the result are typed in sinkhole.results.kvbench.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sinkhole.errors import SinkholeError
from sinkhole.results.kvbench import SCHEMA, Cell


class CellStore:
    """Finished cells of one run's settings, in `--json OUT` and its sidecar `OUT.cells.jsonl`."""

    def __init__(self, out: str | Path, numbers: dict):
        self.out = Path(out)
        self.sidecar = self.out.with_name(self.out.name + ".cells.jsonl")
        self.numbers = numbers
        self.cells: dict[tuple, Cell] = {}

    def _refuse(self, where: Path, theirs: dict) -> None:
        diff = sorted(k for k in set(theirs) | set(self.numbers) if theirs.get(k) != self.numbers.get(k))
        raise SinkholeError(
            f"{where} holds kv-bench cells made with other settings ({', '.join(diff)}): "
            "give another --json path, or delete it to start over"
        )

    def open(self) -> dict[tuple, Cell]:
        """Read what earlier runs of the same settings finished; refuse other settings."""
        if self.out.is_file():
            try:
                d = json.loads(self.out.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise SinkholeError(f"--json {self.out} exists and is not a kv-bench result ({err})") from None
            if not isinstance(d, dict) or d.get("schema") != SCHEMA:
                raise SinkholeError(f"--json {self.out} exists and is not a kv-bench result: give another path")
            if d["settings"].get("numbers") != self.numbers:
                self._refuse(self.out, d["settings"].get("numbers") or {})
            for c in d["cells"]:
                cell = Cell.from_dict(c)
                self.cells[cell.key] = cell
        if self.sidecar.is_file():
            lines = self.sidecar.read_bytes().split(b"\n")
            try:
                head = json.loads(lines[0])
            except ValueError:
                head = {}
            if head.get("numbers") != self.numbers:
                self._refuse(self.sidecar, head.get("numbers") or {})
            for line in lines[1:]:
                try:
                    cell = Cell.from_dict(json.loads(line))
                except (ValueError, TypeError):
                    continue  # the last line cut short by a kill: that cell runs again
                self.cells[cell.key] = cell
        return self.cells

    def _write_line(self, obj: dict, mode: str = "ab") -> None:
        data = (json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n").encode()
        try:
            with open(self.sidecar, mode) as f:
                if mode == "ab" and f.tell() and not self._ends_in_newline():
                    f.write(b"\n")  # after a line cut short by a kill
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            raise SinkholeError(f"cannot write {self.sidecar}: {err.strerror or err}") from None

    def _ends_in_newline(self) -> bool:
        with open(self.sidecar, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def add(self, cell: Cell) -> None:
        if not self.sidecar.is_file():  # written with the first cell: a run refused early leaves nothing
            self._write_line({"numbers": self.numbers}, mode="wb")
        self.cells[cell.key] = cell
        self._write_line(cell.to_dict())

    def finish(self) -> None:
        """After OUT was written: the sidecar's cells are all in it."""
        self.sidecar.unlink(missing_ok=True)
