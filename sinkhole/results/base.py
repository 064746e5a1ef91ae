"""The one base under every typed result: `Result`, its JSON conversion and its generated schema text.

A result is a dataclass on `Result`: `to_dict()` keeps the field order, turns nested results into
dicts and leaves out the optional fields (`opt(...)`) that are None; `from_dict` rebuilds nested
results from the field annotations (`Row`, `list[Row]`, `A | B`, `A | None`), so a file read back is
as typed as a live result. `schema_text` writes the key listing the docstrings and docs show, from
the same dataclasses, so the listing cannot drift from what is written.

Field metadata says what the schema text shows: "shape" (e.g. "[C]"), "map" (an object with free
keys, e.g. "{block: n}"), "keys" (a plain dict with these keys, e.g. "{layer, head, share}"),
"optional" (left out of the JSON when None; the text says when it is present).
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

OPTIONAL = "optional"


def opt(when: str, **meta):
    """A field that is written only when computed (None = left out of the JSON); `when` says when."""
    return field(default=None, metadata={OPTIONAL: when, **meta})


def shape(s: str, **kw):
    """A list field with its shape in the listing ("[C]", "[L'][H]", ...)."""
    return field(metadata={"shape": s}, **kw)


class Result:
    """A typed JSON object (a dataclass): `to_dict()` and `from_dict(d)` convert it both ways."""

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict):
        """Nested results are rebuilt from their dicts (`list[Row]`, `Row`, `A | B`, `Row | None`);
        keys that are not fields are ignored."""
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _load(hints[f.name], d[f.name]) for f in fields(cls) if f.name in d})


def to_dict(obj, cls: type | None = None) -> dict:
    """{name: plain value} over the fields of `cls` (default: obj's class), in their order; optional
    fields (`opt`) that are None are left out, every other field is written (None as null)."""
    return {
        f.name: plain(getattr(obj, f.name))
        for f in fields(cls or obj)
        if not (f.metadata.get(OPTIONAL) and getattr(obj, f.name) is None)
    }


def plain(x):
    """Nested results as dicts, lists, tuples and dicts rebuilt around them; other values unchanged."""
    if isinstance(x, Result):
        return x.to_dict()
    if isinstance(x, list):
        return [plain(v) for v in x]
    if isinstance(x, tuple):
        return tuple(plain(v) for v in x)
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    return x


def jsonable(x):
    """Plain Python types only; NaN/inf become null so the file is strict JSON."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist"):  # numpy scalars and arrays
        return jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(result: Result | dict, path: str | Path, what: str = "JSON report") -> None:
    """Strict JSON through the checked writer (`-`: stdout; a failed write is rescued and reported)."""
    from sinkhole.io import write_output

    d = jsonable(result) if isinstance(result, dict) else result.to_dict()
    write_output(path, json.dumps(d, indent=1, ensure_ascii=False, allow_nan=False), what)


def row_types(tp) -> tuple[list[type], bool]:
    """(result classes, is_list) of an annotation: `Row`, `list[Row]`, `A | B`, `A | None`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is list:
        return ([args[0]] if args and is_dataclass(args[0]) else []), True
    return [a for a in (tp, *args) if isinstance(a, type) and is_dataclass(a)], False


def _load(tp, value):
    rows, many = row_types(tp)
    if not rows or value is None:
        return value
    if many:
        return [rows[0].from_dict(v) for v in value]
    for row in rows:  # the first form whose fields hold the object's keys (NotApplicable has its own)
        if set(value) <= {f.name for f in fields(row)}:
            return row.from_dict(value)
    return rows[0].from_dict(value)


@dataclass
class NotApplicable(Result):
    """A section that does not apply to this model: `NotApplicable(reason=...)` (activation / amplifier:
    no gated FFN; normalization: no norm feeds the attention)."""

    applicable: bool = False
    reason: str = ""


# ---------- the schema text, generated from the dataclasses ----------


def schema_text(tp, paths: dict[str, str] | None = None, prefix: str = "", optional: bool = False) -> str:
    """The notation of a result class or annotation: '{a, b[C], c{x, y}, d[{...}], e?{...}}', and
    'A | {applicable, reason}' for a union of forms. `key?`: an optional field (`opt`).

    With `paths`, records every key path below ('a.b' in objects, 'a[].b' in list items) and what it is:
    'key' (always written), 'optional key' (only when computed, or in a union's later form), 'map' (an
    object with free keys; 'optional map')."""
    rows, _ = row_types(tp)
    texts = []
    for i, row in enumerate(rows):
        hints = typing.get_type_hints(row)
        parts = []
        for f in fields(row):
            opt_ = optional or i > 0 or bool(f.metadata.get(OPTIONAL))
            path = prefix + f.name
            sub_rows, sub_many = row_types(hints[f.name])
            if paths is not None:
                paths[path] = ("optional " if opt_ else "") + ("map" if "map" in f.metadata else "key")
            text = f.name + ("?" if f.metadata.get(OPTIONAL) else "")
            if sub_rows:
                sub = schema_text(hints[f.name], paths, path + ("[]." if sub_many else "."), opt_)
                text += f"[{sub}]" if sub_many else sub
            else:
                text += "".join(f.metadata.get(k, "") for k in ("shape", "map", "keys"))
            parts.append(text)
        texts.append("{" + ", ".join(parts) + "}")
    return " | ".join(texts)
