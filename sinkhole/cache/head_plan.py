"""Which KV heads a HeadAwareSinkCache keeps whole: ranking from a profile's streaming scores, memory
in key slots, and the greedy choice under a budget. Pure functions over lists (no model, no tensors).

`MemoryPlan` is what a cache built from a profile will hold, in slots and bytes.

Rankings (`rank_scores`); what each keeps on copy streams and on kv-bench is measured in
docs/cache.md (the rankings table and "Needle scores"):
    "mix"        "both" and "needle" taking turns (`interleave`), the default; profiles without
                 needle scores fall back to "both".
    "needle"     1 - needle_score: the heads whose answer reads the needle in the profile's
                 calibration NIAH / multi-key / passkey prompts (it does not look at copies).
    "both"       sqrt(retrieval_score x (1 - copy_score)): heads that reach beyond sinks + window at
                 the copy queries *and* put that attention on the token to copy.
    "copy"       1 - copy_score alone (far attention that need not land on the token to copy).
    "retrieval"  retrieval_score alone.
    "all"        1 - the band share over every query (early layers' diffuse heads win).
    "loss"       no order: `plan_by_loss` gives each head the state (stream, select, whole) that
                 keeps the summed measured loss lowest within the budget, from the profile's
                 `streaming.loss` deltas (`sinkhole.kvbench.head_loss`).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from sinkhole.errors import SinkholeError

RANKINGS = ("mix", "needle", "both", "copy", "retrieval", "all", "loss")
# What a streaming head keeps by default (measured on SmolLM2, docs/cache.md; Gemma-3 needs window 128)
DEFAULT_WINDOW, DEFAULT_LOCAL_SINKS, DEFAULT_RANK_BY = 224, 32, "mix"


def rank_scores(stream: dict, rank_by: str = DEFAULT_RANK_BY) -> list[list[float]]:
    """Per layer and KV head, a score where lower = keep whole first, from a profile's `streaming`
    section. A profile without the scores a ranking needs falls back to the plain `scores`."""
    if rank_by not in RANKINGS:
        raise SinkholeError(f"rank_by must be one of {', '.join(RANKINGS)} (got {rank_by!r})")
    if rank_by == "loss":
        raise SinkholeError("rank_by 'loss' is not an order of heads: plan_by_loss gives each head its state")
    copy, hits, needle = stream.get("copy_scores"), stream.get("retrieval_scores"), stream.get("needle_scores")
    if rank_by in ("mix", "needle") and needle:
        by_needle = [[1.0 - v for v in row] for row in needle]
        if rank_by == "needle" or not (copy and hits):
            return by_needle
        return interleave(rank_scores(stream, "both"), by_needle)
    if rank_by in ("mix", "needle"):
        rank_by = "both"  # a profile made before the needle scores
    if rank_by == "both" and copy and hits:
        both = lambda c, r: 1.0 - math.sqrt(max(0.0, r) * max(0.0, 1.0 - c))
        return [[both(c, r) for c, r in zip(cr, rr)] for cr, rr in zip(copy, hits)]
    if rank_by == "retrieval" and hits:
        return [[1.0 - v for v in row] for row in hits]
    if rank_by == "copy" and copy:
        return copy
    return stream["scores"]


def interleave(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    """One ranking from two (lower = keep whole first): each head ranks by the better of its two
    places, ties broken by the worse, so the two orders take turns: scores in [0, 1)."""

    def places(sc):
        order = sorted((v, layer, h) for layer, row in enumerate(sc) for h, v in enumerate(row))
        out = [[0] * len(row) for row in sc]
        for i, (_, layer, h) in enumerate(order):
            out[layer][h] = i
        return out

    n = sum(map(len, a))
    return [[(min(x, y) * n + max(x, y)) / n**2 for x, y in zip(ra, rb)] for ra, rb in zip(places(a), places(b))]


def local_sinks_fit(kind: str, sliding: int | None, window: int, local_sinks: int) -> bool:
    """Whether a streaming head of this layer gets local-sink slots: always on global layers, and on
    sliding layers while window + local sinks stay inside the layer's own window."""
    return local_sinks > 0 and (kind == "global" or window + local_sinks < sliding)


def slot_costs(
    kinds: list[str],
    windows: list[int | None],
    n_sink: int,
    window: int,
    length: int,
    local_sinks: int = 0,
) -> tuple[list[int], list[int]]:
    """Per layer: key slots one KV head holds at `length` tokens as streaming, and as retrieval (= dense)."""
    stream, full = [], []
    for kind, sw in zip(kinds, windows):
        extra = local_sinks if local_sinks_fit(kind, sw, window, local_sinks) else 0
        if kind == "global":
            stream.append(min(length, n_sink + extra + window)), full.append(length)
        else:
            stream.append(min(length, window + extra, sw)), full.append(min(length, sw))
    return stream, full


def check_streams_fit(used: float, dense: float, budget: float, length: int) -> None:
    """One line if every head streaming (`used`, of `dense`) already passes the budget."""
    if used > budget * dense + 1e-9:
        raise SinkholeError(
            f"budget {budget:.0%} of dense KV memory is below what sinks + window alone take "
            f"({used / dense:.0%} at {length} tokens): raise --budget or lower --window"
        )


def select_retrieval_heads(
    scores: list[list[float]],
    kinds: list[str],
    costs: tuple[list[int], list[int]],
    budget: float,
    length: int,
    random_heads: int | None = None,
    dense: float | None = None,
) -> list[list[int]]:
    """Per layer, the KV heads to keep whole so that memory <= budget x dense memory.

    costs: per layer the memory of a streaming and of a whole KV head at `length` tokens, in any one
    unit: `slot_costs(...)` (key slots), or bytes (`HeadAwareSinkCache.from_profile`). dense: the
    dense cache's total in that unit (default: every head whole). Heads are upgraded in order of
    increasing score while the total fits. random_heads=seed: the control, the same number of whole
    heads per layer kind, drawn at random."""
    stream, full = costs
    H = len(scores[0])
    dense = H * sum(full) if dense is None else dense
    used = H * sum(stream)
    check_streams_fit(used, dense, budget, length)
    heads = sorted((scores[l][h], l, h) for l in range(len(kinds)) for h in range(H))
    picked: list[list[int]] = [[] for _ in kinds]
    for _, l, h in heads:
        extra = full[l] - stream[l]
        if extra > 0 and used + extra <= budget * dense + 1e-9:
            picked[l].append(h)
            used += extra
    if random_heads is not None:
        rng = random.Random(random_heads)
        out: list[list[int]] = [[] for _ in kinds]
        for kind in sorted(set(kinds)):
            pool = [(l, h) for l in range(len(kinds)) if kinds[l] == kind for h in range(H)]
            n = sum(len(picked[l]) for l in range(len(kinds)) if kinds[l] == kind)
            for l, h in rng.sample(pool, n):
                out[l].append(h)
        picked = out
    return [sorted(p) for p in picked]


def fill_whole(
    scores: list[list[float]],
    picked: list[list[int]],
    costs: tuple[list[int], list[int]],
    room: float,
    random_heads: int | None = None,
) -> list[list[int]]:
    """Per layer, the selecting heads (`picked`) to keep whole with what the selection leaves.

    costs: per layer one selecting and one whole KV head's memory, in the unit of `room` (what the
    budget has left). Heads go whole in order of increasing score while the extra fits, so the heads
    the ranking puts first, a copy head's long reach among them, read everything again;
    random_heads=seed: in an order drawn at random (the control)."""
    sel, whole = costs
    heads = sorted((scores[l][h], l, h) for l, row in enumerate(picked) for h in row)
    if random_heads is not None:
        random.Random(random_heads).shuffle(heads)
    out: list[list[int]] = [[] for _ in picked]
    for _, l, h in heads:
        extra = whole[l] - sel[l]
        if extra > 0 and extra <= room + 1e-9:
            out[l].append(h)
            room -= extra
    return [sorted(o) for o in out]


def loss_deltas(stream: dict, n_layers: int | None = None, n_heads: int | None = None) -> dict:
    """The profile's `streaming.loss` section, checked against the model's layers x KV heads (when given)."""
    loss = stream.get("loss")
    if not loss or not loss.get("stream"):
        raise SinkholeError(
            "rank_by 'loss' needs the profile's measured loss deltas (streaming.loss): "
            "make them with `python scripts/make_profiles.py --loss-only NAME` or `sinkhole profile --loss`"
        )
    parts = [("", loss)] + ([("answers ", loss["answers"])] if loss.get("answers") else [])
    for (what, part), key in ((p, k) for p in parts for k in ("stream", "select")):
        rows = part.get(key)
        if (
            rows is not None
            and n_layers is not None
            and (len(rows) != n_layers or any(len(r) != n_heads for r in rows))
        ):
            raise SinkholeError(
                f"the profile's {what}loss deltas ({key}) are {len(rows)} layers x {len(rows[0])} heads; "
                f"the model has {n_layers} x {n_heads}"
            )
    return loss


LOSS_STEPS = 2000  # plan_by_loss counts memory in units of room / LOSS_STEPS, costs rounded up


def plan_by_loss(
    loss: dict,
    costs: tuple[list[float], list[float] | None, list[float]],
    room: float,
    reach: list[bool] | None = None,
) -> list[list[str]]:
    """Per layer and KV head, 'stream', 'select' or 'whole': the states whose summed measured loss is
    lowest while their memory beyond every head streaming stays within `room`.

    loss: the profile's `streaming.loss` ({stream [L][Hkv], select [L][Hkv] or None}: nats a head
    costs in that state alone on calibration text, `sinkhole.kvbench.head_loss`; `answers`, the
    same on calibration needle prompts, is added when present); a head kept whole costs none.
    costs: per layer, one KV head's memory streaming, selecting (None: no selection, so the states
    are stream and whole) and whole, in the unit of room. An exact knapsack over the heads (dynamic
    programming, one option per state) on memory counted in steps of room / LOSS_STEPS, each cost
    rounded up, so the plan never passes the budget; among plans of equal loss, the one that holds least.
    reach: per layer, True where its heads must not stream (they select or keep everything): the
    global layers of a model with sliding ones (`reach_layers`). A budget that cannot hold that is
    refused (SinkholeError)."""
    import numpy as np

    stream_c, select_c, whole_c = costs
    with_select = select_c is not None and loss.get("select") is not None
    answers = loss.get("answers") or {}

    def delta(state: str, layer: int, h: int) -> float:
        extra = answers[state][layer][h] if answers.get(state) else 0.0
        return loss[state][layer][h] + extra

    reach = reach or [False] * len(loss["stream"])
    if room <= 0 and not any(reach):
        return [["stream"] * len(row) for row in loss["stream"]]
    step = max(room, 1e-12) / LOSS_STEPS

    def units(c: float, base: float) -> int:
        return max(0, math.ceil((c - base) / step - 1e-9))

    heads, options = [], []
    for layer, row in enumerate(loss["stream"]):
        for h in range(len(row)):
            # stream first: a tie keeps the cheaper state; a head that must reach has no stream state
            opts = [] if reach[layer] else [("stream", 0, delta("stream", layer, h))]
            if with_select:
                opts.append(("select", units(select_c[layer], stream_c[layer]), delta("select", layer, h)))
            opts.append(("whole", units(whole_c[layer], stream_c[layer]), 0.0))
            heads.append((layer, h))
            options.append([o for o in opts if o[1] <= LOSS_STEPS])
    best = np.full(LOSS_STEPS + 1, np.inf)
    best[0] = 0.0
    picks = []
    for opts in options:  # best[r]: the least summed loss of the heads so far holding exactly r steps
        new, pick = np.full_like(best, np.inf), np.zeros(best.shape, dtype=np.int8)
        for k, (_, c, d) in enumerate(opts):
            cand = np.full_like(best, np.inf)
            cand[c:] = best[: LOSS_STEPS + 1 - c] + d
            better = cand < new
            new[better], pick[better] = cand[better], k
        best = new
        picks.append(pick)
    r = int(np.argmin(best))
    if not np.isfinite(best[r]):
        raise SinkholeError(
            "the budget cannot keep a selection in every global layer's heads (the reach a model with "
            "sliding layers has beyond its windows): raise --budget or lower --select"
        )
    states = [["stream"] * len(row) for row in loss["stream"]]
    for (layer, h), opts, pick in zip(reversed(heads), reversed(options), reversed(picks)):
        state, c, _ = opts[pick[r]]
        states[layer][h] = state
        r -= c
    return states


def reach_layers(kinds: list[str], with_select: bool) -> list[bool] | None:
    """Where a loss plan must not stream (`plan_by_loss`'s reach): with a selection, the global layers
    of a model that has sliding ones. They alone read past the sliding windows, and a single-head
    delta misses what one of them streaming costs, since the others kept everything while it was
    measured (what that cost on Gemma-3: docs/cache.md, "Global layers keep their reach")."""
    if not with_select or "sliding" not in kinds:
        return None
    return [k == "global" for k in kinds]


def shuffle_states(states: list[list[str]], kinds: list[str], seed: int) -> list[list[str]]:
    """The random control of a loss plan: per layer kind, the same states dealt to heads at random."""
    rng = random.Random(seed)
    out = [list(row) for row in states]
    for kind in sorted(set(kinds)):
        slots = [(layer, h) for layer, k in enumerate(kinds) if k == kind for h in range(len(states[layer]))]
        dealt = [states[layer][h] for layer, h in slots]
        rng.shuffle(dealt)
        for (layer, h), state in zip(slots, dealt):
            out[layer][h] = state
    return out


@dataclass(frozen=True)
class MemoryPlan:
    """What `HeadAwareSinkCache.from_profile` will hold, per batch row, after `length` tokens.

    length          the tokens the plan is made for; `length_from`: "length" (given) or "trained
                    context" (the model's max_position_embeddings, when no length was given)
    kv_bytes        bytes the cache allocates at `length`: keys and values of every store, the
                    retrieval buffers sized to `length`, the local sinks' bookkeeping (attention sums
                    float32, positions int64) included; equals `cache.kv_bytes()` there
    dense_bytes     a dense cache's keys and values at `length`: `length` slots per global KV head,
                    min(length, own window) per sliding one, `slot_bytes` each
    kv_slots        key slots the policy holds at `length` (`cache.used_slots()`); `dense_slots` dense's
    slot_bytes      one key + one value of one KV head: (head dim k + head dim v) x the dtype's size
    retrieval       per layer, the KV heads kept whole (with select: the selecting ones)
    whole           with select and fill_whole: per layer, the heads kept whole beside them;
                    retrieval_heads counts both kinds
    The budget holds at `length` tokens and beyond (past it the retrieval buffers grow to exactly what
    they hold); a shorter stream holds more than budget x its own dense bytes (the rings are
    allocated whole), so plan for the stream's length."""

    length: int
    length_from: str
    budget: float
    kv_bytes: int
    dense_bytes: int
    kv_slots: int
    dense_slots: int
    slot_bytes: int
    dtype: str
    retrieval_heads: int
    kv_heads: int
    retrieval: list[list[int]]
    n_sink: int
    window: int
    local_sinks: int
    rank_by: str
    random_heads: int | None = None
    select: dict | None = None  # `kv_select.Selection.to_dict()`: retrieval heads of global layers select
    # (with its `sliding`, those of sliding layers too)
    whole: list[list[int]] | None = None  # with select and fill_whole: per layer, the retrieval heads
    # that keep everything with what the selection leaves of the budget

    @property
    def bytes_share(self) -> float:
        return self.kv_bytes / self.dense_bytes

    @property
    def slots_share(self) -> float:
        return self.kv_slots / self.dense_slots

    def to_dict(self) -> dict:
        return {**asdict(self), "bytes_share": round(self.bytes_share, 4), "slots_share": round(self.slots_share, 4)}

    def line(self) -> str:
        """One line for a terminal: what the cache holds against the budget."""
        heads = "random" if self.random_heads is not None else self.rank_by
        whole = "whole"
        if self.select:
            whole = f"whole or {self.select['capacity']} keys chosen at the prompt's end"
            if self.select.get("sliding"):
                whole += f" (on sliding layers {self.select['share']:.0%} of their window)"
            if self.whole:
                whole += f", {sum(map(len, self.whole))} of them whole"
        return (
            f"head-aware plan at {self.length} tokens ({self.length_from}): {self.retrieval_heads}/{self.kv_heads} "
            f"KV heads {whole} ({heads}), the rest {self.n_sink} sinks + {self.local_sinks} local + {self.window}; "
            f"{self.kv_bytes / 2**20:.2f} MiB = {self.bytes_share:.1%} of dense's {self.dense_bytes / 2**20:.2f} MiB "
            f"(budget {self.budget:.0%}), {self.kv_slots} of {self.dense_slots} key slots ({self.slots_share:.1%}) "
            f"per batch row"
        )
