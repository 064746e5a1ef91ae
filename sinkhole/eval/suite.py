"""Prompt suites: what `sinkhole eval` runs over.

A suite is a list of `SuiteItem(index, prompt, category)`. Sources:
    "builtin"        the shipped suite, sinkhole/data/prompts/builtin.jsonl (>= 400 prompts, 10 categories)
    FILE.jsonl       one JSON object a line: {"prompt": str, "category": str (optional)}
    FILE.txt         one prompt a line (category "default"); blank lines are skipped

`index` is the item's position in the source (0-based, blank .txt lines not counted), so results
keep pointing at the same prompt when a subset is selected. The suite's `sha256` covers exactly the
selected items (index, category, prompt), which is what a resumed run must agree on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sinkhole.errors import SinkholeError

BUILTIN_PATH = Path(__file__).resolve().parent.parent / "data" / "prompts" / "builtin.jsonl"
DEFAULT_CATEGORY = "default"


@dataclass(frozen=True)
class SuiteItem:
    index: int
    prompt: str | list[int]  # text, or token ids (used as they are: no template, no special tokens added)
    category: str


@dataclass
class Suite:
    source: str  # "builtin" or the file path as given
    items: list[SuiteItem]

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for it in self.items:
            h.update(json.dumps([it.index, it.category, it.prompt], ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()

    @property
    def categories(self) -> list[str]:
        return sorted({it.category for it in self.items})

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, limit: int | None) -> Suite:
        """An evenly spaced subset of `limit` items (every category of an ordered suite stays represented)."""
        n = len(self.items)
        if limit is None or limit >= n:
            return self
        if limit < 1:
            raise SinkholeError(f"--limit must be at least 1 (got {limit})")
        picks = sorted({int(i * n / limit) for i in range(limit)})
        return Suite(self.source, [self.items[i] for i in picks])


def _read_jsonl(path: Path, text: str) -> list[SuiteItem]:
    items = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as err:
            raise SinkholeError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        if isinstance(d, str):
            d = {"prompt": d}
        if not isinstance(d, dict) or not isinstance(d.get("prompt"), str):
            raise SinkholeError(f'{path}:{lineno}: expected {{"prompt": "...", "category": "..."}}')
        if not d["prompt"].strip():
            raise SinkholeError(f"{path}:{lineno}: empty prompt")
        category = d.get("category") or DEFAULT_CATEGORY
        items.append(SuiteItem(len(items), d["prompt"], str(category)))
    return items


def _read_txt(text: str) -> list[SuiteItem]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return [SuiteItem(i, ln, DEFAULT_CATEGORY) for i, ln in enumerate(lines)]


def load_suite(spec: str | Path, limit: int | None = None) -> Suite:
    """The suite named by `spec` ("builtin", a .jsonl or a .txt file), optionally an evenly spaced subset."""
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise SinkholeError(f"load_suite needs 'builtin' or a .jsonl / .txt file path, not {spec!r}")
    if limit is not None:
        from sinkhole.validate import integer

        limit = integer(limit, "limit", lo=1, example=100)
    source = str(spec)
    path = BUILTIN_PATH if source == "builtin" else Path(spec)
    if not path.is_file():
        raise SinkholeError(f"prompt suite not found: {spec} (use 'builtin', a .jsonl or a .txt file)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SinkholeError(f"cannot read prompt suite {path}: {err}") from None
    if path.suffix == ".jsonl":
        items = _read_jsonl(path, text)
    elif path.suffix == ".txt":
        items = _read_txt(text)
    else:
        raise SinkholeError(f"prompt suite {path} must end in .jsonl or .txt")
    if not items:
        raise SinkholeError(f"prompt suite {path} holds no prompts")
    return Suite(source, items).subset(limit)
