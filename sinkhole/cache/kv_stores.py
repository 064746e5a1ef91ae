"""Key/value stores for a subset of one layer's KV heads, used by `HeadAwareSinkCache`.

Every store has the same small protocol:

    update(k, v, n, memo=None) -> (keys, values, mask, observe)
        k, v: (B, H, q, D) for positions n..n+q-1. memo: the cache's `ForwardMemo`, through which
        a mask that depends only on the positions is built once per forward for every layer (None:
        built here). keys/values: what the q queries attend to,
        (B, H, N, D). mask: None (every key visible to every query), (q, N) bool, or (B, H, q, N)
        bool (True = may attend). observe: None, or a callable that takes the column sums of the
        attention probabilities (B, H, N) float32, summed over the queries and the query heads that
        read each KV head; the attention function must call it (stores that choose what to keep by
        the attention their keys receive need it).
    nbytes() -> bytes allocated;  used_slots(n) -> key slots the policy holds after n tokens
    planned_nbytes(n, slot_bytes) -> bytes one KV head (one batch row) allocates after n tokens, a
        key + value slot costing slot_bytes: what `HeadAwareSinkCache.from_profile` plans with, equal
        to `nbytes()` per head at n (n >= `limit` for a Grow; tests/test_kv_budget.py)
    map_batch(fn), reset()

- `kv_select.Select` (its own module): every position until the prompt ends, then the keys
  its last queries chose.
- `Grow`: every position, in a buffer that doubles when full (no per-step concatenation), never
  past `limit` slots (the planned length); past it, exactly the positions held.
- `Ring`: S sinks (the first S positions, written once) + a ring of the last W positions.
- `LocalSinkRing`: a Ring plus M "local sink" slots. When a key leaves the window it competes
  for a local-sink slot with the attention it received while it was in the window (summed over the
  queries that saw it there); the M highest are kept. Why (measured on Gemma-3-270M's sliding
  layers, docs/cache.md): once the first token has left a local layer's window, the attention
  that reaches beyond the last 64 keys lands mostly on a few delimiter tokens ('.', '\\n\\n'), the
  top 8 keys taking 41-97% of it in 14 of 15 layers; keeping those few keys recovers most of what a
  short window loses. A local sink stops being visible once it is older than the layer's own
  sliding window, as in the model. The choice is made once per forward call: a chunk of queries
  sees the local sinks chosen before it (token-by-token decoding chooses at every token).
"""

from __future__ import annotations

import torch

NEG = float("-inf")


class ForwardMemo:
    """Tensors that depend only on where a forward call stands, such as a chunk's causal mask: built
    by the first layer that asks and shared by the others (every layer of a cache sees the same
    positions), instead of once per layer. `start(n, q)` at each layer's update; entries go when a
    call at other positions starts. Keys must name everything the tensor depends on besides n, q."""

    def __init__(self):
        self.at, self.items = None, {}

    def start(self, n: int, q: int) -> None:
        if (n, q) != self.at:
            self.at, self.items = (n, q), {}

    def get(self, key, build):
        if key not in self.items:
            self.items[key] = build()
        return self.items[key]

    def derived(self, mask: torch.Tensor, tag, build):
        """build(mask), once per forward for the (q, N) masks every layer shares (they come from
        here), else every time. Keyed by the mask itself: the entry holds it, so its id names no
        other tensor while the entry lives."""
        if mask.dim() != 2:
            return build(mask)
        held, value = self.get((tag, id(mask)), lambda: (mask, build(mask)))
        return value if held is mask else build(mask)


def shared(memo: ForwardMemo | None, key, build):
    """build(), once per forward when there is a memo."""
    return build() if memo is None else memo.get(key, build)


def causal_mask(n: int, q: int, device) -> torch.Tensor:
    """(q, n + q) bool: query n + i sees keys 0..n + i."""
    qpos, kpos = torch.arange(n, n + q, device=device), torch.arange(n + q, device=device)
    return kpos[None, :] <= qpos[:, None]


def kept(n: int, q: int, S: int, W: int, device):
    """The keys of a chunk at positions n..n+q-1 that a ring of S sinks and W recent slots holds once
    it is in: the sinks among them and the last W, as offsets into the chunk: a slice (a view, no
    copy) when they are one run, else an index tensor."""
    a, b = min(max(S - n, 0), q), max(q - W, 0)  # offsets [0, a) are sinks, [b, q) the last W
    if a >= b:
        return slice(0, q)
    if a == 0:
        return slice(b, q)
    return torch.cat((torch.arange(a), torch.arange(b, q))).to(device)


def part(t: torch.Tensor, keep) -> torch.Tensor:
    """t's entries `keep` (a slice or an index tensor, from `kept`) along dim 2."""
    return t[:, :, keep] if isinstance(keep, slice) else t.index_select(2, keep)


class _Store:
    """What every store shares: its tensors (`BUFFERS`, all None until the first update) and `cap`,
    the slots it holds at most (None: unbounded)."""

    BUFFERS: tuple[str, ...] = ("k", "v")
    SLOT_EXTRA_BYTES = 0  # bookkeeping per slot besides its key and value
    cap: int | None = None

    def __init__(self):
        self.reset()

    def nbytes(self) -> int:
        return 0 if self.k is None else sum(getattr(self, b).nbytes for b in self.BUFFERS)

    def allocated_slots(self, n: int) -> int:
        """Slots allocated per KV head after n tokens (a bounded store allocates its `cap` at once)."""
        return 0 if n <= 0 else self.cap

    def planned_nbytes(self, n: int, slot_bytes: int) -> int:
        return self.allocated_slots(n) * (slot_bytes + self.SLOT_EXTRA_BYTES)

    def used_slots(self, n: int) -> int:
        return n if self.cap is None else min(n, self.cap)

    def map_batch(self, fn) -> None:
        if self.k is not None:
            for b in self.BUFFERS:
                setattr(self, b, fn(getattr(self, b)))

    def reset(self) -> None:
        for b in self.BUFFERS:
            setattr(self, b, None)


class Grow(_Store):
    """Every position: a buffer that doubles when full (amortised O(1) per token).

    limit: the length the cache was planned for (None: none). Doubling stops at `limit` slots, so at
    `limit` tokens the buffer holds exactly `limit` (a plain doubling buffer holds up to twice what
    it needs: 2,048 slots for 1,030 tokens). Past `limit` it grows to exactly what it holds, one
    copy per forward as DynamicCache's concatenation, so the bytes a plan promised at `limit` x
    budget stay within budget x dense at every longer length too (dense grows as fast)."""

    MIN_CAPACITY = 256

    def __init__(self, limit: int | None = None):
        super().__init__()
        self.limit = limit

    def grown(self, need: int, current: int) -> int:
        """The capacity to allocate when `need` slots do not fit in `current`."""
        doubled = max(self.MIN_CAPACITY, need, 2 * current)
        if self.limit is None:
            return doubled
        return min(self.limit, doubled) if need <= self.limit else need

    def allocated_slots(self, n: int) -> int:
        """After n tokens fed one at a time (at n >= limit: exactly n, however they were chunked)."""
        if n <= 0:
            return 0
        if self.limit is not None and n >= self.limit:
            return n
        cap = self.grown(1, 0)
        while cap < n:
            cap = self.grown(cap + 1, cap)
        return cap

    def update(self, k: torch.Tensor, v: torch.Tensor, n: int, memo: ForwardMemo | None = None):
        B, H, q, D = k.shape
        if self.k is None or n + q > self.k.shape[2]:
            cap = self.grown(n + q, 0 if self.k is None else self.k.shape[2])
            nk, nv = k.new_empty(B, H, cap, D), v.new_empty(B, H, cap, v.shape[-1])
            if self.k is not None:
                nk[:, :, :n], nv[:, :, :n] = self.k[:, :, :n], self.v[:, :, :n]
            self.k, self.v = nk, nv
        self.k[:, :, n : n + q] = k
        self.v[:, :, n : n + q] = v
        mask = None
        if q > 1:
            mask = shared(memo, ("causal", n, q, k.device), lambda: causal_mask(n, q, k.device))
        return self.k[:, :, : n + q], self.v[:, :, : n + q], mask, None


class Ring(_Store):
    """S pinned first positions + a ring of the W most recent positions (position p >= S in slot
    S + (p - S) % W)."""

    def __init__(self, n_sink: int, window: int):
        super().__init__()
        self.S, self.W = n_sink, window

    @property
    def cap(self) -> int:
        return self.S + self.W

    def slots(self, pos: torch.Tensor) -> torch.Tensor:
        return torch.where(pos < self.S, pos, self.S + (pos - self.S) % self.W)

    def held_positions(self, n: int) -> list[int]:
        """Positions in slot order after n tokens (the valid prefix of the ring)."""
        sinks = list(range(min(self.S, n)))
        recent = list(range(max(self.S, n - self.W), n))
        order = sorted(recent, key=lambda p: (p - self.S) % self.W)
        return sinks + order

    def update(self, k: torch.Tensor, v: torch.Tensor, n: int, memo: ForwardMemo | None = None):
        B, H, q, D = k.shape
        if self.k is None:
            self.k = k.new_zeros(B, H, self.cap, D)
            self.v = v.new_zeros(B, H, self.cap, v.shape[-1])
        if q == 1:  # decode: write one slot, attend to the valid prefix, no mask needed
            slot = n if n < self.S else self.S + (n - self.S) % self.W
            self.k[:, :, slot] = k[:, :, 0]
            self.v[:, :, slot] = v[:, :, 0]
            m = min(n + 1, self.cap)
            return self.k[:, :, :m], self.v[:, :, :m], None, None
        held = min(n, self.cap)
        keys = torch.cat((self.k[:, :, :held], k), dim=-2)
        values = torch.cat((self.v[:, :, :held], v), dim=-2)
        new = torch.arange(n, n + q, device=k.device)
        keep = kept(n, q, self.S, self.W, k.device)  # what the ring holds after the chunk
        slots = self.slots(new[keep])
        self.k.index_copy_(2, slots, part(k, keep))
        self.v.index_copy_(2, slots, part(v, keep))
        mask = shared(memo, ("ring", self.S, self.W, n, q, k.device), lambda: self._mask(n, q, new))
        return keys, values, mask, None

    def _mask(self, n: int, q: int, new: torch.Tensor) -> torch.Tensor:
        """(q, held + q) bool: sinks, then the window's slots, then the chunk's own keys."""
        pos = torch.tensor(self.held_positions(n) + list(range(n, n + q)), device=new.device)
        qp, kp = new[:, None], pos[None, :]
        return (kp <= qp) & ((kp < self.S) | (kp > qp - self.W))


class LocalSinkRing(_Store):
    """S sinks + W recent (as a Ring) plus M local-sink slots filled by the attention keys received
    while in the window (module docstring). Slots: [0, S) sinks, [S, S + M) local sinks, then the
    window ring. `sliding`: the layer's own window (local sinks older than that are dropped).
    Besides k and v it holds, per slot, `acc` (B, H, cap) the attention received in the window and
    `pos` (B, H, cap) the position held, -1 = empty."""

    BUFFERS = ("k", "v", "acc", "pos")
    SLOT_EXTRA_BYTES = 4 + 8  # acc float32, pos int64

    def __init__(self, n_sink: int, local: int, window: int, sliding: int | None = None):
        super().__init__()
        self.S, self.M, self.W, self.sliding = n_sink, local, window, sliding

    @property
    def cap(self) -> int:
        return self.S + self.M + self.W

    def slots(self, pos: torch.Tensor) -> torch.Tensor:
        return torch.where(pos < self.S, pos, self.S + self.M + (pos - self.S) % self.W)

    def _chunk_mask(self, n: int, new: torch.Tensor, memo: ForwardMemo | None) -> torch.Tensor:
        """What a chunk's queries (positions `new`) see of the cap + q keys: (q, N) bool, the same for
        every batch row and head, when every local sink held is visible to every query (the usual
        case: sinks and window slots hold the same positions in every row and head, and only local
        sinks differ); else (B, H, q, N). The (q, N) part is built once per forward (`memo`)."""
        S, M = self.S, self.M
        mask = shared(
            memo, ("local-sink ring", S, M, self.W, n, len(new), new.device), lambda: self._shared_mask(n, new)
        )
        # a local sink left the window before n, so it is older than every query: only emptiness and
        # the layer's own sliding window hide it
        local = self.pos[:, :, None, S : S + M] >= 0
        if self.sliding is not None:
            local = local & (new[:, None] - self.pos[:, :, None, S : S + M] < self.sliding)
        if bool(local.all()):
            return mask
        B, H = self.pos.shape[:2]
        mask = mask.expand(B, H, *mask.shape).clone()
        mask[..., S : S + M] = local
        return mask

    def _shared_mask(self, n: int, new: torch.Tensor) -> torch.Tensor:
        """(q, cap + q) bool: the chunk's visibility of the sinks, the window's slots and its own keys
        (local-sink columns True), from n alone: before a chunk at n the window slots hold positions
        max(S, n - W + 1)..n - 1 (the slot of n - W, leaving, is empty)."""
        S, M, W = self.S, self.M, self.W
        window = [-1] * W
        for p in range(max(S, n - W + 1), n):
            window[(p - S) % W] = p
        held = [p if p < n else -1 for p in range(S)] + [-1] * M + window
        kp = torch.cat((torch.tensor(held, device=new.device), new))
        kind = torch.tensor([0] * S + [1] * M + [2] * W, device=new.device)
        kind = torch.cat((kind, torch.where(new < S, 0, 2)))
        t = new[:, None]
        mask = (kp >= 0) & (kp <= t) & ((kind != 2) | (kp > t - W))
        mask[:, S : S + M] = True
        return mask

    def _promote(self, k, v, pos, acc, last: int) -> None:
        """Keep the M candidates (B, H, Nc, ...) with the most attention in the local-sink slots;
        candidates that are empty, or past the sliding window at position `last`, cannot win."""
        ok = pos >= 0
        if self.sliding is not None:
            ok &= last - pos < self.sliding
        score = acc.masked_fill(~ok, NEG)
        top, idx = score.topk(self.M, dim=-1)  # (B, H, M)
        s = slice(self.S, self.S + self.M)
        self.k[:, :, s] = k.gather(2, idx[..., None].expand(-1, -1, -1, k.shape[-1]))
        self.v[:, :, s] = v.gather(2, idx[..., None].expand(-1, -1, -1, v.shape[-1]))
        self.pos[:, :, s] = pos.gather(2, idx).masked_fill(top == NEG, -1)
        self.acc[:, :, s] = top

    def _replace_weakest(self, slot: int, last: int) -> None:
        """The key in `slot`, leaving the window, takes the local-sink slot of the weakest held one if
        it drew more attention (per batch row and head; empty and expired local sinks count as -inf).
        The same as `_promote` over the M held + 1 candidate, in fewer small ops (once per decode step)."""
        loc = slice(self.S, self.S + self.M)
        held = self.acc[:, :, loc]
        if self.sliding is not None:
            held = held.masked_fill(last - self.pos[:, :, loc] >= self.sliding, NEG)
        weakest, j = held.min(-1, keepdim=True)  # (B, H, 1)
        win = self.acc[:, :, slot : slot + 1] > weakest
        dst = j + self.S
        for buf in (self.k, self.v):
            at = dst[..., None].expand(-1, -1, -1, buf.shape[-1])
            buf.scatter_(2, at, torch.where(win[..., None], buf[:, :, slot : slot + 1], buf.gather(2, at)))
        self.pos.scatter_(2, dst, torch.where(win, self.pos[:, :, slot : slot + 1], self.pos.gather(2, dst)))
        self.acc.scatter_(2, dst, torch.where(win, self.acc[:, :, slot : slot + 1], weakest))

    def update(self, k: torch.Tensor, v: torch.Tensor, n: int, memo: ForwardMemo | None = None):
        B, H, q, D = k.shape
        S, M, W, cap, dev = self.S, self.M, self.W, self.cap, k.device
        if self.k is None:
            self.k, self.v = k.new_zeros(B, H, cap, D), v.new_zeros(B, H, cap, v.shape[-1])
            self.acc = torch.zeros(B, H, cap, dtype=torch.float32, device=dev)
            self.acc[:, :, S : S + M] = NEG  # empty local sinks lose to any key
            self.pos = torch.full((B, H, cap), -1, dtype=torch.long, device=dev)
            self._kind = torch.tensor([0] * S + [1] * M + [2] * W, device=dev)
            self._not_local = self._kind != 1
        window = slice(S + M, cap)
        slot = n if n < S else S + M + (n - S) % W  # where position n goes: the slot of n - W, leaving now
        if n >= S + W:
            self._replace_weakest(slot, last=n)
        if q == 1:  # decode: reuse the slot of the key that left
            self.k[:, :, slot], self.v[:, :, slot] = k[:, :, 0], v[:, :, 0]
            self.pos[:, :, slot], self.acc[:, :, slot] = n, 0.0
            ok = self.pos >= 0  # every held window key is within the last W: only emptiness and expiry matter
            if self.sliding is not None:
                ok &= self._not_local | (n - self.pos < self.sliding)

            def observe(colsum: torch.Tensor) -> None:
                self.acc[:, :, window] += colsum[:, :, window]

            return self.k, self.v, ok[:, :, None, :], observe
        if n >= S + W:
            self.pos[:, :, slot] = -1  # competed already: the chunk must not see it as a candidate again
        new = torch.arange(n, n + q, device=dev)
        keys, values = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)
        kpos = torch.cat((self.pos, new.expand(B, H, q)), dim=2)
        kind = torch.cat((self._kind, torch.where(new < S, 0, 2)))
        mask = self._chunk_mask(n, new, memo)

        def observe(colsum: torch.Tensor) -> None:
            acc = torch.cat((self.acc, torch.zeros(B, H, q, device=dev)), dim=2)
            acc[:, :, S + M :] += colsum[:, :, S + M :]  # attention received while in the window
            leaving = (kind == 2) & (kpos >= S) & (kpos < n + q - W)  # n + q - W leaves at the next call
            cand = (kind == 1) | leaving  # the local sinks held and every key that left the window during the chunk
            self._promote(keys, values, kpos.masked_fill(~cand, -1), acc, last=n + q)
            self.acc[:, :, window] = acc[:, :, window]
            keep = kept(n, q, S, W, dev)
            slots = self.slots(new[keep])
            for buf, src in ((self.k, k), (self.v, v)):
                buf.index_copy_(2, slots, part(src, keep))
            self.pos.index_copy_(2, slots, new[keep].expand(B, H, -1).contiguous())
            self.acc.index_copy_(2, slots, part(acc[:, :, cap:], keep).contiguous())

        return keys, values, mask, observe


def layer_stores(
    kind: str,
    sliding: int | None,
    n_sink: int,
    window: int,
    local_sinks: int,
    length: int | None,
    select=None,
):
    """One layer's (streaming store, retrieval store): the retrieval heads keep everything (a Grow
    sized for `length` tokens; on sliding layers the layer's own window) or, with `select` (a
    `kv_select.Selection`), the keys the question chooses (on sliding layers a share of the window,
    where it leaves something to choose and `select.sliding`)."""
    if kind != "global":
        full = (select and select.sliding_store(sliding)) or whole_store(kind, sliding, length)
    else:
        full = whole_store(kind, sliding, length) if select is None else select.store()
    return streaming_store(kind, sliding, n_sink, window, local_sinks), full


def whole_store(kind: str, sliding: int | None, length: int | None):
    """What a head that keeps everything holds: every position (a Grow sized for `length` tokens), or
    on a sliding layer the layer's own window."""
    return Grow(length) if kind == "global" else Ring(0, sliding)


def streaming_store(kind: str, sliding: int | None, n_sink: int, window: int, local_sinks: int):
    """What a streaming head keeps: sinks + window (global layers) or a window (sliding layers, no
    sinks: they never saw their first tokens leave in training), plus `local_sinks` local-sink slots
    when they fit inside the layer's own window."""
    S = n_sink if kind == "global" else 0
    from sinkhole.cache.head_plan import local_sinks_fit

    if local_sinks_fit(kind, sliding, window, local_sinks):
        return LocalSinkRing(S, local_sinks, window, sliding=sliding)
    return Ring(S, window if sliding is None else min(window, sliding))
