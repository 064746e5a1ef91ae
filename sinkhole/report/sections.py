"""Typed JSON sections: the machinery under `sinkhole mechanism`'s result types (report/mechanism_schema.py).

A section is a dataclass whose `to_dict()` keeps its field order and leaves out optional fields that are
None, and whose `from_dict` rebuilds nested sections from their annotations (`Row`, `list[Row]`, `A | B`),
so a file read back is as typed as a live result. Field metadata says what the generated schema text
shows: "shape" (e.g. "[C]"), "map" (an object with free keys, e.g. "{block: n}"), "optional" (when the
field is written).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields, is_dataclass

from sinkhole.report.schema import _Row

# field metadata: "shape" (e.g. "[C]"), "map" (an object with free keys, e.g. "{block: n}"), "optional"
# (left out of the JSON when None; the text says when it is present)
OPTIONAL = "optional"


def opt(when: str, **meta):
    """A field that is written only when computed (None = left out of the JSON)."""
    return field(default=None, metadata={OPTIONAL: when, **meta})


def shape(s: str, **kw):
    """A list field with its shape in the listing ("[C]", "[L'][H]", ...)."""
    return field(metadata={"shape": s}, **kw)


class _Section(_Row):
    """A typed JSON object: `to_dict()` keeps the field order and leaves out optional fields that are None."""

    def to_dict(self) -> dict:
        return _fields_dict(self, fields(self))

    @classmethod
    def from_dict(cls, d: dict):
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _load(hints[f.name], d[f.name]) for f in fields(cls) if f.name in d})


def _fields_dict(obj, flds) -> dict:
    """{name: plain value} over `flds`, in order; optional fields that are None are left out."""
    return {
        f.name: _plain(getattr(obj, f.name))
        for f in flds
        if not (f.metadata.get(OPTIONAL) and getattr(obj, f.name) is None)
    }


def _plain(x):
    if isinstance(x, _Row):
        return x.to_dict()
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def _rows_of(tp) -> tuple[list[type], bool]:
    """(section classes, is_list) of an annotation: `Row`, `list[Row]`, `A | B`, `A | None`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is list:
        return ([args[0]] if args and is_dataclass(args[0]) else []), True
    return [a for a in (tp, *args) if isinstance(a, type) and is_dataclass(a)], False


def _load(tp, value):
    rows, many = _rows_of(tp)
    if not rows or value is None:
        return value
    if many:
        return [rows[0].from_dict(v) for v in value]
    for row in rows:  # the first form whose fields hold the object's keys (NotApplicable has its own)
        names = {f.name for f in fields(row)}
        if set(value) <= names:
            return row.from_dict(value)
    return rows[0].from_dict(value)


@dataclass
class NotApplicable(_Section):
    """A section that does not apply to this model: `NotApplicable(reason=...)` (activation / amplifier:
    no gated FFN; normalization: no norm feeds the attention)."""

    applicable: bool = False
    reason: str = ""
