"""Typed JSON sections: the machinery under `sinkhole mechanism`'s result types (results/mechanism.py).

A section is a dataclass whose `to_dict()` keeps its field order and leaves out optional fields that are
None, and whose `from_dict` rebuilds nested sections from their annotations (`Row`, `list[Row]`, `A | B`),
so a file read back is as typed as a live result. Field metadata says what the generated schema text
shows: "shape" (e.g. "[C]"), "map" (an object with free keys, e.g. "{block: n}"), "optional" (when the
field is written).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from sinkhole.results.report import _Row

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


@dataclass
class NotApplicable(_Section):
    """A section that does not apply to this model: `NotApplicable(reason=...)` (activation / amplifier:
    no gated FFN; normalization: no norm feeds the attention)."""

    applicable: bool = False
    reason: str = ""
