"""The data an HTML report embeds: a compact, JSON-ready view of a typed `Report` (and its `detail`).

The page is one file with plotly.js inlined (~4.8 MB), so everything else must stay small: floats are
rounded to 4 significant digits, and the two big arrays are packed as little-endian integers in
base64 (`pack`):
    maps   (L, H, T(T+1)/2) uint8, square-root scale: byte = round(255 sqrt(p)), p = (byte/255)^2.
           Only the causal lower triangle (query t, key k <= t), row by row. Error <= 0.4% of 1 near
           p = 1 and much finer for small p, where attention patterns live.
    alpha  (L, H, T) float16 (relative error <= 5e-4, down to 6e-8): a log axis shows the small values.
Full query x key maps are embedded only when T <= MAPS_MAX_LEN and L*H*T(T+1)/2 <= MAPS_MAX_BYTES;
otherwise the page shows the per-key view (alpha per head), and says so.

Sections whose structure sinkhole does not know (`mechanism`, `eval`, any other extra key) become a
generic tree (`to_nodes`): dicts of scalars -> tables, lists of numbers -> line charts, rectangular
lists of number lists -> heatmaps, lists of flat dicts -> tables with columns.
"""

from __future__ import annotations

import base64
import math
from typing import TYPE_CHECKING

import numpy as np

from sinkhole.render.html_mechanism import as_mechanism, designed, mechanism_view
from sinkhole.results.base import jsonable
from sinkhole.results.report import MAPS_MAX_LEN, Report

if TYPE_CHECKING:
    from sinkhole.results.mechanism import Mechanism

MAPS_MAX_BYTES = 2_000_000  # and only if all heads' lower triangles fit in this many bytes
NODES_MAX_ITEMS = 60  # children shown per generic list / dict before "... more"
NODES_MAX_ROWS = 300  # rows shown per generic table
NODES_MAX_DEPTH = 6

# report keys the dedicated sections draw; any other top-level key gets a generic section
KNOWN_KEYS = {
    "schema",
    "model",
    "prompt",
    "chat",
    "tokens",
    "spikes",
    "sinks",
    "overlap",
    "kv",
    "layers",
    "heads",
    "residual",
}


# One colour per channel id across the whole page (every figure that draws a channel uses this map), in
# the order the channels first appear. No grey (the norm lines, the channels not in the map) and no
# red close to the page's sink red. Distinct for up to len(CHANNEL_PALETTE) channels, then reused.
CHANNEL_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#7b4173",
)
OTHER_CHANNEL = "#b8bec9"  # a channel drawn once, outside the map (the amplifier's largest non-spike channels)


def channel_colours(*groups) -> dict[str, str]:
    """{str(channel): colour} for the channels of `groups` (lists of channel ids, None skipped), first
    appearance first. JSON object keys are strings, so the page looks colours up by String(c)."""
    out: dict[str, str] = {}
    for group in groups:
        for c in group or []:
            if str(c) not in out:
                out[str(c)] = CHANNEL_PALETTE[len(out) % len(CHANNEL_PALETTE)]
    return out


def _page_channels(v: dict) -> list[list[int] | None]:
    """Every list of channel ids the page draws: the selected token's spike channels, then the
    Mechanism section's spike channels and amplifier channels."""
    m = v.get("mechanism") or {}
    return [
        (v.get("channels") or {}).get("channels"),
        (m.get("channels") or {}).get("channels"),
        [p["channel"] for p in (m.get("amplifier") or {}).get("per") or []],
    ]


def rnd(x, digits: int = 4):
    """Round every float in a JSON-like value to `digits` significant digits; NaN/inf -> None."""
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return x
    if isinstance(x, float):
        if not math.isfinite(x):
            return None
        if x == 0.0:
            return 0.0
        r = float(f"{x:.{digits}g}")
        return int(r) if r.is_integer() and abs(r) < 1e15 else r
    if isinstance(x, dict):
        return {str(k): rnd(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rnd(v, digits) for v in x]
    if isinstance(x, np.ndarray):
        return rnd(x.tolist(), digits)
    if isinstance(x, np.generic):
        return rnd(x.item(), digits)
    return str(x)


def pack(a: np.ndarray, dtype: str, scale: str = "linear") -> dict:
    """Values in [0, 1] as little-endian base64: 'f16' as is, 'u8'/'u16' quantised on a 'sqrt' or 'linear' scale."""
    a = np.clip(np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0), 0.0, 1.0)
    if dtype == "f16":
        return {
            "shape": list(a.shape),
            "dtype": dtype,
            "scale": "linear",
            "b64": base64.b64encode(a.astype("<f2").tobytes()).decode("ascii"),
        }
    if scale == "sqrt":
        a = np.sqrt(a)
    top = {"u8": 255, "u16": 65535}[dtype]
    q = np.rint(a * top).astype("<u1" if dtype == "u8" else "<u2")
    return {
        "shape": list(a.shape),
        "dtype": dtype,
        "scale": scale,
        "b64": base64.b64encode(q.tobytes()).decode("ascii"),
    }


def unpack(p: dict) -> np.ndarray:
    """Inverse of `pack` (up to quantisation); used by tests and by anyone reading the page's data."""
    raw = base64.b64decode(p["b64"])
    if p["dtype"] == "f16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float64).reshape(p["shape"])
    q = np.frombuffer(raw, dtype="<u1" if p["dtype"] == "u8" else "<u2")
    a = q.astype(np.float64) / (255 if p["dtype"] == "u8" else 65535)
    return (a * a if p["scale"] == "sqrt" else a).reshape(p["shape"])


def lower_triangles(maps: np.ndarray) -> np.ndarray:
    """(L, H, T, T) -> (L, H, T(T+1)/2): entries (q, k <= q), row by row; index q(q+1)/2 + k."""
    T = maps.shape[-1]
    rows, cols = np.tril_indices(T)  # row-major order: (0,0), (1,0), (1,1), (2,0) ...
    return maps[..., rows, cols]


def maps_plan(n_layers: int, n_heads: int, T: int, have_maps: bool) -> tuple[bool, str]:
    """Whether the page embeds full maps, and the sentence it shows about it."""
    size = n_layers * n_heads * T * (T + 1) // 2
    if have_maps and T <= MAPS_MAX_LEN and size <= MAPS_MAX_BYTES:
        return True, (
            f"Full query × key attention maps are shown for inputs up to {MAPS_MAX_LEN} tokens (this one has {T})."
        )
    if T > MAPS_MAX_LEN:
        why = f"this input has {T} tokens, more than the {MAPS_MAX_LEN} for which full query × key maps are embedded"
    elif size > MAPS_MAX_BYTES:
        why = f"all {n_layers * n_heads} heads' maps would take {size / 1e6:.1f} MB"
    else:
        why = "the probe kept no attention maps for this report (run it with maps_max_len)"
    return False, f"Per-key view: {why}, so each head shows α(k), the mean attention key k receives."


def view(report: Report, mechanism: Mechanism | None = None) -> dict:
    """Everything the page's script needs, compact and rounded. `mechanism`: a `sinkhole mechanism`
    result's typed sections (a MechanismResult), drawn beside the example prompt's report; a report read
    back from JSON may carry them as its extra `mechanism` dict instead."""
    m = report.model
    T = len(report.tokens)
    L, H = m.n_layers, m.n_heads
    heads = report.heads.mass_on_top_sink if report.heads is not None else None
    if heads:  # layers with several attention sublayers have more heads than n_heads
        H = len(heads[0])
    resid = report.residual
    sp, sk = report.spikes, report.sinks
    v = {
        "model": rnd(m.to_dict()),
        "T": T,
        "L": L,
        "H": H,
        "tokens": [t.text for t in report.tokens],
        "ids": [t.id for t in report.tokens],
        "mass": rnd(sk.per_token_mass),
        "sink_rate": rnd(sk.per_token_sink_rate),
        "score": rnd(sp.per_token_score),
        "spikes": rnd([s.to_dict() for s in sp.tokens]),
        "sinks": rnd([s.to_dict() for s in sk.tokens]),
        "top_sink": rnd(sk.top.to_dict()),
        "threshold": sp.threshold,
        "epsilon": sk.epsilon,
        "heads": rnd(heads),
        "layers": rnd(report.layers.to_dict()),
        "resid_norm": rnd(resid.norm if resid else None),
        "embed_norm": rnd(resid.embed_norm if resid else None),
        "maps": None,
        "alpha": None,
        "channels": None,
    }
    d = report.detail
    embed_maps, v["maps_note"] = maps_plan(L, H, T, d is not None and d.maps is not None)
    if d is not None:
        if embed_maps:
            v["maps"] = pack(lower_triangles(d.maps.astype(np.float32)), "u8", "sqrt")
        v["alpha"] = pack(d.alpha, "f16")
        v["channels"] = {
            "channels": d.channels,
            "why": d.channels_why,
            "k": d.top_k,
            "values": rnd(d.channel_values.tolist()),
        }
    else:
        v["maps_note"] = (
            "Per-key view unavailable: this page was rendered from a report without its Capture, "
            "which holds per-head attention; only the layers × heads grid is shown."
        )
    sections = dict(report.extra)
    if mechanism is not None:
        sections["mechanism"] = mechanism.sections()  # the generic tree ("all numbers") shows the JSON
    if designed(sections.get("mechanism")):
        typed = mechanism if mechanism is not None else as_mechanism(sections["mechanism"])
        v["mechanism"] = rnd(mechanism_view(typed, m))
    v["sections"] = [{"key": k, "nodes": to_nodes(val)} for k, val in _sections(report, sections)]
    v["channel_colours"] = channel_colours(*_page_channels(v))
    v["other_channel"] = OTHER_CHANNEL
    return v


def _sections(report: Report, extra: dict) -> list[tuple[str, object]]:
    """The generic sections in page order: mechanism, eval, then the report's other sections in JSON order."""
    first = [k for k in ("mechanism", "eval") if extra.get(k) is not None]
    rest = {}
    if report.learned_sinks is not None:  # drawn as a tree beside its card
        rest["learned_sinks"] = report.learned_sinks.to_dict()
    rest.update(extra)
    return [(k, jsonable(extra[k])) for k in first] + [
        (k, jsonable(val)) for k, val in rest.items() if k not in KNOWN_KEYS and k not in first and val is not None
    ]


def _is_num(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _is_scalar(x) -> bool:
    return x is None or isinstance(x, (bool, int, float, str))


def to_nodes(x, depth: int = 0) -> list[dict]:
    """A JSON-like value as display nodes: table, series, matrix, records, group, json."""
    if depth >= NODES_MAX_DEPTH:
        return [{"kind": "json", "value": rnd(x)}]
    if _is_scalar(x):
        return [{"kind": "table", "rows": [["value", rnd(x)]]}]
    if isinstance(x, dict):
        nodes, rows = [], []
        for k, val in x.items():
            if _is_scalar(val) or (isinstance(val, list) and (len(val) <= 1 or _short_scalars(val))):
                rows.append([str(k), rnd(val)])
        if rows:
            nodes.append({"kind": "table", "rows": rows[:NODES_MAX_ROWS], "more": max(0, len(rows) - NODES_MAX_ROWS)})
        in_table = {r[0] for r in rows}
        rest = [(k, val) for k, val in x.items() if str(k) not in in_table]
        for k, val in rest[:NODES_MAX_ITEMS]:
            nodes.append(_titled(str(k), val, depth))
        if len(rest) > NODES_MAX_ITEMS:
            nodes.append({"kind": "note", "text": f"... {len(rest) - NODES_MAX_ITEMS} more entries not shown"})
        return nodes
    if isinstance(x, (list, tuple)):
        return [_list_node(list(x), depth)]
    return [{"kind": "json", "value": rnd(x)}]


def _short_scalars(xs: list) -> bool:
    """A short list of scalars reads best as one table cell (e.g. layer lists [3, 11])."""
    return all(_is_scalar(v) for v in xs) and (len(xs) <= 8 or not all(_is_num(v) for v in xs))


def _titled(title: str, val, depth: int) -> dict:
    if isinstance(val, list):
        node = _list_node(val, depth + 1)
        if node["kind"] in ("series", "matrix", "records"):
            return {**node, "title": title}
    return {"kind": "group", "title": title, "children": to_nodes(val, depth + 1)}


def _list_node(xs: list, depth: int) -> dict:
    if xs and all(_is_num(v) for v in xs):
        return {"kind": "series", "y": rnd(xs)}
    if (
        xs
        and all(isinstance(r, list) and r and all(_is_num(v) for v in r) for r in xs)
        and len({len(r) for r in xs}) == 1
    ):
        if len(xs[0]) <= 3 < len(xs):  # a list of pairs or triples (e.g. (layer, head)): a table, not a heatmap
            return {
                "kind": "records",
                "columns": [f"[{i}]" for i in range(len(xs[0]))],
                "rows": rnd(xs[:NODES_MAX_ROWS]),
                "more": max(0, len(xs) - NODES_MAX_ROWS),
            }
        return {"kind": "matrix", "z": rnd(xs)}
    if xs and all(isinstance(r, dict) and all(_is_scalar(v) or _short_scalars(v) for v in r.values()) for r in xs):
        cols: list[str] = []
        for r in xs:
            cols += [str(k) for k in r if str(k) not in cols]
        rows = [[rnd(r.get(c)) for c in cols] for r in xs[:NODES_MAX_ROWS]]
        return {"kind": "records", "columns": cols, "rows": rows, "more": max(0, len(xs) - NODES_MAX_ROWS)}
    if all(_is_scalar(v) for v in xs):
        return {
            "kind": "table",
            "rows": [[str(i), rnd(v)] for i, v in enumerate(xs[:NODES_MAX_ROWS])],
            "more": max(0, len(xs) - NODES_MAX_ROWS),
        }
    children = [_titled(f"[{i}]", v, depth) for i, v in enumerate(xs[:NODES_MAX_ITEMS])]
    if len(xs) > NODES_MAX_ITEMS:
        children.append({"kind": "note", "text": f"... {len(xs) - NODES_MAX_ITEMS} more items not shown"})
    return {"kind": "group", "title": "", "children": children}
