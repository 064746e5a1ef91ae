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
    of: tuple[int, int] | None = None  # a subset's source: (items, categories) of the whole suite

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
        """A stratified subset of `limit` items: every category keeps a share in proportion to its size,
        at least one item each (when `limit` allows: below the number of categories, `limit` categories
        evenly spaced in order of first appearance get one each), evenly spaced within the category.
        Deterministic, in suite order; `selection()` says what was taken."""
        n = len(self.items)
        if limit is None or limit >= n:
            return self
        if limit < 1:
            raise SinkholeError(f"--limit must be at least 1 (got {limit})")
        groups: dict[str, list[int]] = {}  # category -> positions of its items, in order of first appearance
        for i, it in enumerate(self.items):
            groups.setdefault(it.category, []).append(i)
        quotas = _quotas([len(g) for g in groups.values()], limit)
        picks = sorted(g[j * len(g) // q] for g, q in zip(groups.values(), quotas) for j in range(q))
        return Suite(self.source, [self.items[i] for i in picks], of=(n, len(groups)))

    def selection(self, unit: str = "prompts") -> str:
        """One line on what a subset holds ('' for a whole suite): how many items of how many, and which
        categories it covers."""
        if self.of is None:
            return ""
        n, k = self.of
        line = f"{len(self.items)} of {n} {unit}"
        covered = len(self.categories)
        if k == 1:
            return line + ", evenly spaced"
        if covered < k:
            return line + f", one from each of {covered} of the {k} categories (a limit of {k} or more covers all)"
        return line + f", from all {k} categories in proportion to their size"


def _quotas(sizes: list[int], limit: int) -> list[int]:
    """Items to take from each of the categories of `sizes` (in order), `limit` < sum(sizes) in all."""
    k = len(sizes)
    if limit < k:
        chosen = {i * k // limit for i in range(limit)}
        return [int(c in chosen) for c in range(k)]
    # one each, the rest in proportion to what each has left (largest remainder, ties to the earlier one);
    # rest < sum(spare), so no category is asked for more than it holds
    rest, spare = limit - k, [s - 1 for s in sizes]
    exact = [rest * s / sum(spare) for s in spare]
    q = [int(e) for e in exact]
    for c in sorted(range(k), key=lambda c: (q[c] - exact[c], c))[: rest - sum(q)]:
        q[c] += 1
    return [1 + x for x in q]


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
    """The suite named by `spec` ("builtin", a .jsonl or a .txt file), optionally a stratified subset of
    `limit` items (`Suite.subset`)."""
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
