"""Keys chosen by the question: SnapKV's selection as pure tensor functions, and `Select` and
`SlidingSelect`, the `HeadAwareSinkCache` stores for retrieval heads that keep what the question
points at, not everything (of the whole prompt on global layers, of the window on sliding ones).

SnapKV (Li et al., 2024): the prompt's last `window` queries (the "observation window", which holds
the question) show which earlier keys the answer will need. Per KV head, each key before the window
is scored by the attention those queries give it, the scores are smoothed by an average pool of
width `kernel` (so a kept key brings its neighbours: a number's digits, a word's pieces), and the
best are kept with the window itself. `sinkhole.kvbench.snapkv` applies it to every global layer
(the baseline); the stores apply it to chosen heads only. On a sliding layer only the keys its
window still shows the prompt's last query can be kept: the model would never read the others again.
What keeping a share of each sliding window did, against some windows whole and the rest cut to a
short recent window: docs/cache.md, "Every head selects".

`SELECT_KERNEL` pools wider than SnapKV's 5 because the question's queries point at a needle's
first tokens, not all of them; what each width kept is measured in docs/cache.md ("Keys chosen
by the question").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from sinkhole.errors import SinkholeError

SELECT_KERNEL, SELECT_WINDOW = 15, 32  # SnapKV's observation window; kv-bench's too


@dataclass(frozen=True)
class Selection:
    """What a selecting head keeps: `capacity` keys of a `prompt_length`-token prompt, chosen by its
    last `window` queries (pool width `kernel`), and room for `max_new` tokens after it."""

    capacity: int
    prompt_length: int
    window: int = SELECT_WINDOW
    kernel: int = SELECT_KERNEL
    max_new: int = 0
    share: float | None = None  # capacity / prompt_length as asked; sliding layers keep it of their window
    sliding: bool = True  # sliding-window layers' retrieval heads select too (False: their whole window)

    def store(self) -> Select:
        return Select(self.capacity, self.prompt_length, self.window, self.kernel, self.max_new)

    def sliding_store(self, sliding: int) -> SlidingSelect | None:
        """The store of a sliding-window layer's retrieval head: `share` of the keys its window shows
        the prompt's last query, or None where that is the whole window (the caller keeps it)."""
        seen = min(self.prompt_length, sliding)
        capacity = max(self.window + 1, round((self.share or self.capacity / self.prompt_length) * seen))
        if not self.sliding or capacity >= seen:
            return None
        return SlidingSelect(capacity, sliding, self.prompt_length, self.window, self.kernel, self.max_new)

    def to_dict(self) -> dict:
        return asdict(self)


def window_scores(
    query: torch.Tensor, key: torch.Tensor, scaling: float, window: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of the last `window` queries on every key, per KV head: (B, Hkv, N) float32.

    query (B, Hq, q, D) for the chunk that ends the prompt, key (B, Hkv, N, D) every key it reads,
    post-RoPE. mask: the chunk's (q, N) or (B, Hkv, q, N) bool, True = may attend (a store's, for
    keys not in position order or out of a sliding window); None: key i is position i, the chunk the
    last q (causal). Softmax in float32, summed over the window's queries, averaged over the
    Hq / Hkv query heads of each KV head."""
    B, Hq, q, D = query.shape
    Hkv, N = key.shape[1], key.shape[2]
    G = Hq // Hkv
    qw = query[:, :, q - window :].float().reshape(B, Hkv, G, window, D)
    s = torch.einsum("bhgwd,bhnd->bhgwn", qw, key.float()) * scaling
    if mask is None:
        visible = (
            torch.arange(N, device=key.device)[None, :] <= torch.arange(N - window, N, device=key.device)[:, None]
        )
    else:
        visible = mask[..., q - window :, :]
        visible = visible.unsqueeze(2) if visible.dim() == 4 else visible
    s = s.masked_fill(~visible, float("-inf"))
    return torch.softmax(s, dim=-1).sum(3).mean(2)


def select_keys(scores: torch.Tensor, capacity: int, window: int, kernel: int) -> torch.Tensor:
    """Positions kept per (row, KV head): (B, H, capacity) sorted, from window scores (B, H, N).

    The last `window` positions are always kept; of the rest, the `capacity - window` with the
    highest scores after an average pool of width `kernel` (stride 1, zero padding, so a key at the
    edge is averaged over the `kernel` slots centred on it). Ties go to the earlier position."""
    B, H, N = scores.shape
    prefix = N - window
    s = scores[..., :prefix]
    if kernel > 1:
        s = torch.nn.functional.avg_pool1d(s.reshape(B * H, 1, prefix), kernel, 1, kernel // 2).reshape(B, H, -1)
        s = s[..., :prefix]  # an even kernel pads one more on the right
    keep = capacity - window
    # stable descending sort: equal scores keep the earlier position first
    top = torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :keep]
    recent = torch.arange(prefix, N, device=scores.device).expand(B, H, window)
    return torch.cat((top.sort(-1).values, recent), dim=-1)


def selection_for(
    share, prompt_length, length, window: int = SELECT_WINDOW, kernel: int = SELECT_KERNEL, sliding: bool = True
):
    """The `Selection` that keeps `share` of a `prompt_length`-token prompt, `length` tokens in all
    (the prompt and what follows it), checked: a one-line SinkholeError for what cannot be.
    sliding: sliding-window layers' retrieval heads keep `share` of their window too (False: all of it)."""
    from sinkhole.validate import like_option

    share = like_option(share, "select", "select")
    if prompt_length is None or length is None:
        raise SinkholeError("select needs prompt_length and length (the prompt + the tokens after it)")
    prompt_length = like_option(prompt_length, "prompt_length", "tokens")
    if prompt_length > length:
        raise SinkholeError(f"prompt_length {prompt_length} is past length {length}")
    capacity = max(window + 1, round(share * prompt_length))
    if capacity >= prompt_length:
        raise SinkholeError(f"select {share} keeps {capacity} of a {prompt_length}-token prompt: nothing to choose")
    return Selection(capacity, prompt_length, window, kernel, length - prompt_length, float(share), bool(sliding))


class Select:
    """A `kv_stores` store (same protocol): every position until the prompt's `prompt_length`
    tokens are in, then the `capacity` that `select_keys` picks from the last `window` queries'
    attention, and every later position appended to them.

    The forward whose chunk ends the prompt returns an `observe` callable with a `window` attribute:
    the attention function gives it `window_scores` of the group's queries and keys (not the column
    sums other stores take). Memory: the whole prompt until then (as SnapKV, which prefills densely),
    then one buffer of capacity + `max_new` slots per head (decoding past max_new doubles it)."""

    BUFFERS = ("k", "v")
    SLOT_EXTRA_BYTES = 0

    def __init__(self, capacity: int, prompt_length: int, window: int, kernel: int = SELECT_KERNEL, max_new: int = 0):
        if not window < capacity < prompt_length:
            raise SinkholeError(
                f"a selection keeps more than its window ({window}) and fewer than the prompt's "
                f"{prompt_length} keys (got {capacity})"
            )
        self.capacity, self.prompt_length, self.window, self.kernel = capacity, prompt_length, window, kernel
        self.max_new = max_new
        self.reset()

    def reset(self) -> None:
        from sinkhole.cache.kv_stores import Grow

        self.prompt = Grow(self.prompt_length)  # every position until the prompt ends
        self.k = self.v = None  # then the kept keys and what follows them
        self.held = None  # slots in use once the selection is made (None before)

    def nbytes(self) -> int:
        return self.prompt.nbytes() + (0 if self.k is None else sum(getattr(self, b).nbytes for b in self.BUFFERS))

    def allocated_slots(self, n: int) -> int:
        """Per head after n tokens: the prompt's positions until it ends, then capacity + max_new
        (past that, doubled as often as the decoded tokens need)."""
        if n < self.prompt_length:
            return n
        slots, need = self.capacity + self.max_new, self.capacity + n - self.prompt_length
        while slots < need:
            slots *= 2
        return slots

    def planned_nbytes(self, n: int, slot_bytes: int) -> int:
        return self.allocated_slots(n) * slot_bytes

    def used_slots(self, n: int) -> int:
        return n if n <= self.prompt_length else self.capacity + n - self.prompt_length

    def map_batch(self, fn) -> None:
        self.prompt.map_batch(fn)
        if self.k is not None:
            for b in self.BUFFERS:
                setattr(self, b, fn(getattr(self, b)))

    def update(self, k: torch.Tensor, v: torch.Tensor, n: int, memo=None):
        if self.held is not None:
            return self._append(k, v, memo, n)
        q = self._check_chunk(k, n)
        keys, values, mask, _ = self.prompt.update(k, v, n, memo)
        observe = None
        if n + q == self.prompt_length:

            def observe(scores: torch.Tensor) -> None:
                self._keep(select_keys(scores, self.capacity, self.window, self.kernel))

            observe.window = self.window
        return keys, values, mask, observe

    def _check_chunk(self, k: torch.Tensor, n: int) -> int:
        q, P = k.shape[2], self.prompt_length
        if n < P < n + q:
            raise SinkholeError(f"a selecting cache's chunk ran past the prompt's end ({P}): end a forward there")
        if n + q == P and q < self.window:
            raise SinkholeError(f"the prompt's last chunk has {q} tokens, fewer than the selection's window")
        return q

    def _keep(self, pos: torch.Tensor) -> None:
        """Keep positions `pos` (B, H, capacity) of the prompt, and let the prompt's buffer go."""
        P = self.prompt_length
        self._hold(self.prompt.k[:, :, :P], self.prompt.v[:, :, :P], pos)

    def _hold(self, keys: torch.Tensor, values: torch.Tensor, idx: torch.Tensor) -> None:
        """Entries `idx` (B, H, C) of keys / values (B, H, N, D) in fresh buffers with room for
        max_new more; the prompt's store is emptied."""
        B, H, C = idx.shape
        self.prompt.reset()
        self.k = keys.new_empty(B, H, C + self.max_new, keys.shape[-1])
        self.v = values.new_empty(B, H, C + self.max_new, values.shape[-1])
        self.k[:, :, :C] = keys.gather(2, idx[..., None].expand(-1, -1, -1, keys.shape[-1]))
        self.v[:, :, :C] = values.gather(2, idx[..., None].expand(-1, -1, -1, values.shape[-1]))
        self.held = C

    def _grow(self, m: int) -> None:
        """Double every buffer until m slots fit (decoding past max_new)."""
        grow = self.k.shape[2]
        while grow < m:
            grow *= 2
        for name in self.BUFFERS:
            t = getattr(self, name)
            setattr(self, name, torch.cat((t, t.new_zeros(*t.shape[:2], grow - t.shape[2], *t.shape[3:])), 2))

    def _append(self, k: torch.Tensor, v: torch.Tensor, memo, n: int):
        q, m = k.shape[2], self.held + k.shape[2]
        if m > self.k.shape[2]:
            self._grow(m)
        self.k[:, :, self.held : m], self.v[:, :, self.held : m] = k, v
        held, self.held = self.held, m
        return self.k[:, :, :m], self.v[:, :, :m], self._mask(held, q, n, k.device, memo), None

    def _mask(self, held: int, q: int, n: int, device, memo):
        """None for a decode step (every kept key precedes it); a chunk's own keys are causal."""
        if q == 1:
            return None

        def build():
            mask = torch.ones(q, held + q, dtype=torch.bool, device=device)
            mask[:, held:] = torch.ones(q, q, dtype=torch.bool, device=device).tril()
            return mask

        return build() if memo is None else memo.get(("selected", held, q, device), build)


class SlidingSelect(Select):
    """`Select` for a sliding-window layer's head: the layer's own window (a `kv_stores.Ring` of
    `sliding` keys) until the prompt ends, then `capacity` of the keys the prompt's last query can
    still see, chosen the same way, and every later position. A kept key stops being visible once
    it is `sliding` positions behind a query, as in the model; each slot's position is kept for that
    mask (int64, counted in the bytes)."""

    BUFFERS = ("k", "v", "pos")
    SLOT_EXTRA_BYTES = 8

    def __init__(self, capacity, sliding, prompt_length, window, kernel=SELECT_KERNEL, max_new=0):
        if not window < capacity < min(prompt_length, sliding):
            raise SinkholeError(
                f"a sliding layer's selection keeps more than its window ({window}) and fewer than the "
                f"{min(prompt_length, sliding)} keys its layer shows (got {capacity})"
            )
        self.sliding = sliding
        super().__init__(capacity, prompt_length, window, kernel, max_new)

    def reset(self) -> None:
        from sinkhole.cache.kv_stores import Ring

        self.prompt = Ring(0, self.sliding)  # the layer's own window until the prompt ends
        self.k = self.v = self.pos = None
        self.held = self.oldest = None

    def allocated_slots(self, n: int) -> int:
        return 0 if n <= 0 else self.sliding if n < self.prompt_length else super().allocated_slots(n)

    def planned_nbytes(self, n: int, slot_bytes: int) -> int:
        extra = 0 if n < self.prompt_length else self.SLOT_EXTRA_BYTES
        return self.allocated_slots(n) * (slot_bytes + extra)

    def used_slots(self, n: int) -> int:
        return min(n, self.sliding) if n <= self.prompt_length else super().used_slots(n)

    def update(self, k: torch.Tensor, v: torch.Tensor, n: int, memo=None):
        if self.held is not None:
            return self._append(k, v, memo, n)
        q = self._check_chunk(k, n)
        before = self.prompt.held_positions(n)  # the ring's slot order, which its keys come in
        keys, values, mask, _ = self.prompt.update(k, v, n, memo)
        if n + q < self.prompt_length:
            return keys, values, mask, None
        positions = torch.tensor(before + list(range(n, n + q)), device=k.device)

        def observe(scores: torch.Tensor) -> None:
            self._keep_seen(scores, positions, keys, values)

        observe.window = self.window
        return keys, values, mask, observe

    def _keep_seen(self, scores, positions, keys, values) -> None:
        """Of the chunk's keys (scores (B, H, N), `positions` (N,) in the keys' order), keep
        `capacity` of those the prompt's last query sees, in position order."""
        seen = min(self.prompt_length, self.sliding)
        candidates = positions.argsort()[-seen:]  # positions P - seen .. P - 1
        pick = candidates[select_keys(scores[..., candidates], self.capacity, self.window, self.kernel)]
        self._hold(keys, values, pick)
        C = self.held
        self.pos = positions.new_zeros(*pick.shape[:2], C + self.max_new)
        self.pos[:, :, :C] = positions[pick]
        self.oldest = int(self.pos[:, :, :C].min())

    def _append(self, k: torch.Tensor, v: torch.Tensor, memo, n: int):
        m = self.held + k.shape[2]
        if m > self.k.shape[2]:
            self._grow(m)
        self.pos[:, :, self.held : m] = torch.arange(n, n + k.shape[2], device=k.device)
        return super()._append(k, v, memo, n)

    def _mask(self, held: int, q: int, n: int, device, memo):
        """While every kept key is inside every query's window, Select's; after, per head and row:
        key position p is visible to query position t when t - sliding < p <= t."""
        if self.oldest > n + q - 1 - self.sliding:
            return super()._mask(held, q, n, device, memo)
        kp = self.pos[:, :, None, : held + q]
        qp = torch.arange(n, n + q, device=device)[:, None]
        return (kp <= qp) & (kp > qp - self.sliding)  # (B, H, q, held + q)
