"""Which KV heads a HeadAwareSinkCache keeps whole: ranking from a profile's streaming scores, memory
in key slots, and the greedy choice under a budget. Pure functions over lists (no model, no tensors).

Rankings (`rank_scores`), measured on 2k-token copy streams at 50% KV (docs/cache.md):
    "both"       sqrt(retrieval_score x (1 - copy_score)): heads that reach beyond sinks + window at
                 the copy queries *and* put that attention on the token to copy. Default: the only
                 one of the four that picked the copying heads of both bundled models (SmolLM2:
                 75.0% recall, 0.95x dense; Gemma-3: its two copying global layers, 5 and 11).
    "copy"       1 - copy_score alone: SmolLM2 72.6%, but on Gemma-3 it ranks global layer 17 (far
                 attention that does not land on the token to copy) above layer 11, and recall is 0.
    "retrieval"  retrieval_score alone: right on Gemma-3, 54.4% on SmolLM2.
    "all"        1 - the band share over every query: 0% on SmolLM2 (early layers' diffuse heads win).
"""

from __future__ import annotations

import math
import random

from sinkhole.errors import SinkholeError

RANKINGS = ("both", "copy", "retrieval", "all")
# What a streaming head keeps by default (measured on SmolLM2, docs/cache.md; Gemma-3 needs window 128)
DEFAULT_WINDOW, DEFAULT_LOCAL_SINKS, DEFAULT_RANK_BY = 224, 32, "both"


def rank_scores(stream: dict, rank_by: str = DEFAULT_RANK_BY) -> list[list[float]]:
    """Per layer and KV head, a score where lower = keep whole first, from a profile's `streaming`
    section. A profile without the scores a ranking needs falls back to the plain `scores`."""
    if rank_by not in RANKINGS:
        raise SinkholeError(f"rank_by must be one of {', '.join(RANKINGS)} (got {rank_by!r})")
    copy, hits = stream.get("copy_scores"), stream.get("retrieval_scores")
    if rank_by == "both" and copy and hits:
        both = lambda c, r: 1.0 - math.sqrt(max(0.0, r) * max(0.0, 1.0 - c))
        return [[both(c, r) for c, r in zip(cr, rr)] for cr, rr in zip(copy, hits)]
    if rank_by == "retrieval" and hits:
        return [[1.0 - v for v in row] for row in hits]
    if rank_by == "copy" and copy:
        return copy
    return stream["scores"]


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


def select_retrieval_heads(
    scores: list[list[float]],
    kinds: list[str],
    costs: tuple[list[int], list[int]],
    budget: float,
    length: int,
    random_heads: int | None = None,
) -> list[list[int]]:
    """Per layer, the KV heads to keep whole so that slots <= budget x dense slots.

    costs: `slot_costs(...)`, per layer the slots of a streaming and of a whole head at `length`
    tokens. Heads are upgraded in order of increasing score while the total fits. random_heads=seed:
    the control, the same number of whole heads per layer kind, drawn at random."""
    stream, full = costs
    H = len(scores[0])
    dense = H * sum(full)
    used = H * sum(stream)
    if used > budget * dense + 1e-9:
        raise SinkholeError(
            f"budget {budget:.0%} of dense KV memory is below what sinks + window alone take "
            f"({used / dense:.0%} at {length} tokens): raise --budget or lower --window"
        )
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
