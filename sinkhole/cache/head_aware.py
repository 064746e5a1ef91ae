"""HeadAwareSinkCache: streaming KV heads keep sinks + a window, retrieval KV heads keep everything.

DuoAttention (Xiao et al., ICLR 2025) showed that only some heads need the whole context; the
others attend to the sinks and the recent tokens. DuoAttention finds them by optimisation; here a
profile's measured streaming scores (`sinkhole.profiles.streaming`) rank them, and the heads that
look least like streaming heads keep everything, as many as a KV memory budget allows.

    profile = load_profile("smollm2-135m")
    cache = HeadAwareSinkCache.from_profile(profile, model=model, window=256, budget=0.5, length=2048)
    with head_aware_attention(model):
        model.generate(ids, cache=cache, max_new_tokens=200)
    cache.kv_bytes()

Design decisions:

- Storage per layer (B batch, D head dim): retrieval heads in one growing buffer (B, Hr, capacity, D)
  that doubles when full (amortised O(1) per token, never a per-step concatenation of the cache);
  streaming heads in a preallocated ring (B, Hs, S + W, D): S sink slots written once, then W
  window slots where position p lands in slot S + (p - S) % W. Nothing is re-rotated: positions
  stay the model's own (DuoAttention's choice), which is exact within the trained context (this
  cache is for long-context recall, not for running past the context as `SinkCache` does).
- Sliding-window layers (Gemma-3's local layers) never saw their sinks leave the window in training,
  so their streaming heads keep a plain window of W (no sinks) and their retrieval heads keep the
  layer's own window.
- Heads of different lengths cannot share one attention call, so the cache pairs with an attention
  function registered with transformers' `AttentionInterface` ("sinkhole_head_aware", installed
  by the `head_aware_attention(model)` context manager, removed in `finally`). The cache layer
  hands its per-group tensors to it through the `kwargs` dict that transformers passes from
  `Cache.update` to the attention interface (no globals, no patched model code). Forgetting the
  context manager raises a SinkholeError at the next layer instead of computing garbage.
- Decode (one new token): each group is one SDPA call over its stored tensors, no mask (every
  stored key is visible; order does not matter to softmax). Chunks (prefill): each group gets a
  boolean mask built from its keys' absolute positions, so a chunked prefill is exact too.
- Batches: rows of one length, no padding (as SinkCache).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from sinkhole.cache.sink_cache import BatchOpsMixin
from sinkhole.errors import SinkholeError

ATTN_NAME = "sinkhole_head_aware"
PLAN_KEY = "sinkhole_head_aware_plan"


class _Ring:
    """S pinned first positions + a ring of W recent positions, for a subset of KV heads."""

    def __init__(self, n_sink: int, window: int):
        self.S, self.W = n_sink, window
        self.k = self.v = None

    def slots(self, pos: torch.Tensor) -> torch.Tensor:
        return torch.where(pos < self.S, pos, self.S + (pos - self.S) % self.W)

    def held_positions(self, n: int) -> list[int]:
        """Positions in slot order after n tokens (the valid prefix of the ring)."""
        sinks = list(range(min(self.S, n)))
        recent = list(range(max(self.S, n - self.W), n))
        order = sorted(recent, key=lambda p: (p - self.S) % self.W)
        return sinks + order

    def update(self, k: torch.Tensor, v: torch.Tensor, n: int):
        """Add q tokens at positions n..n+q-1; return (keys, values, key positions or None)."""
        B, H, q, D = k.shape
        if self.k is None:
            self.k = k.new_zeros(B, H, self.S + self.W, D)
            self.v = v.new_zeros(B, H, self.S + self.W, v.shape[-1])
        cap = self.S + self.W
        if q == 1:  # decode: write one slot, attend to the valid prefix, no mask needed
            slot = n if n < self.S else self.S + (n - self.S) % self.W
            self.k[:, :, slot] = k[:, :, 0]
            self.v[:, :, slot] = v[:, :, 0]
            m = min(n + 1, cap)
            return self.k[:, :, :m], self.v[:, :, :m], None
        held = self.held_positions(n)
        pos = torch.tensor(held + list(range(n, n + q)), device=k.device)
        keys = torch.cat((self.k[:, :, : len(held)], k), dim=-2)
        values = torch.cat((self.v[:, :, : len(held)], v), dim=-2)
        new = torch.arange(n, n + q, device=k.device)
        keep = (new < self.S) | (new >= n + q - self.W)  # what the ring holds after the chunk
        self.k.index_copy_(2, self.slots(new[keep]), k[:, :, keep])
        self.v.index_copy_(2, self.slots(new[keep]), v[:, :, keep])
        return keys, values, pos

    def visible(self, qpos: torch.Tensor, kpos: torch.Tensor) -> torch.Tensor:
        """(q, N) bool: causal, and within sinks + the last W keys of each query."""
        qp, kp = qpos[:, None], kpos[None, :]
        return (kp <= qp) & ((kp < self.S) | (kp > qp - self.W))

    def nbytes(self) -> int:
        return 0 if self.k is None else self.k.nbytes + self.v.nbytes

    def used_slots(self, n: int) -> int:
        return min(n, self.S + self.W)


class _Grow:
    """Every position, for a subset of KV heads: a buffer that doubles when full."""

    MIN_CAPACITY = 256

    def __init__(self):
        self.k = self.v = None

    def update(self, k: torch.Tensor, v: torch.Tensor, n: int):
        B, H, q, D = k.shape
        if self.k is None or n + q > self.k.shape[2]:
            cap = max(self.MIN_CAPACITY, n + q, 2 * (0 if self.k is None else self.k.shape[2]))
            nk, nv = k.new_empty(B, H, cap, D), v.new_empty(B, H, cap, v.shape[-1])
            if self.k is not None:
                nk[:, :, :n], nv[:, :, :n] = self.k[:, :, :n], self.v[:, :, :n]
            self.k, self.v = nk, nv
        self.k[:, :, n : n + q] = k
        self.v[:, :, n : n + q] = v
        pos = None if q == 1 else torch.arange(n + q, device=k.device)
        return self.k[:, :, : n + q], self.v[:, :, : n + q], pos

    @staticmethod
    def visible(qpos: torch.Tensor, kpos: torch.Tensor) -> torch.Tensor:
        return kpos[None, :] <= qpos[:, None]

    def nbytes(self) -> int:
        return 0 if self.k is None else self.k.nbytes + self.v.nbytes

    @staticmethod
    def used_slots(n: int) -> int:
        return n


class HeadAwareLayer(BatchOpsMixin, CacheLayerMixin):
    """One layer: `retrieval` KV heads in a store of `full` (a _Grow, or a _Ring for sliding
    layers), the other KV heads in a `_Ring(stream_sink, window)`."""

    is_compileable = False
    is_croppable = False

    def __init__(self, n_kv_heads: int, retrieval: list[int], stream: _Ring, full, is_sliding: bool = False):
        super().__init__()
        self.is_sliding = is_sliding
        self.n_kv_heads = n_kv_heads
        self.retrieval = sorted(set(int(h) for h in retrieval))
        if any(not 0 <= h < n_kv_heads for h in self.retrieval):
            raise SinkholeError(f"retrieval heads {self.retrieval} out of range for {n_kv_heads} KV heads")
        self.streaming = [h for h in range(n_kv_heads) if h not in self.retrieval]
        self.stream, self.full = stream, full
        self.cumulative_length = 0
        self.plan = None
        self._idx: dict = {}

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def _index(self, heads: list[int], device):
        """How to pick a head subset: None (every head), a slice (contiguous heads: views, no
        gather), or an index tensor."""
        if len(heads) == self.n_kv_heads:
            return None
        if heads == list(range(heads[0], heads[-1] + 1)):
            return slice(heads[0], heads[-1] + 1)
        if (device, tuple(heads)) not in self._idx:
            self._idx[(device, tuple(heads))] = torch.tensor(heads, device=device)
        return self._idx[(device, tuple(heads))]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.plan is not None and not self.plan["used"]:
            raise SinkholeError(
                "HeadAwareSinkCache needs its attention function: run the model inside "
                "`with head_aware_attention(model):`"
            )
        n, q = self.cumulative_length, key_states.shape[-2]
        groups = []
        for heads, store in ((self.retrieval, self.full), (self.streaming, self.stream)):
            if not heads:
                continue
            idx = self._index(heads, key_states.device)
            k, v = take(key_states, idx), take(value_states, idx)
            keys, values, kpos = store.update(k, v, n)
            mask = None
            if kpos is not None:
                mask = store.visible(torch.arange(n, n + q, device=keys.device), kpos)
            groups.append((idx, keys, values, mask))
        self.cumulative_length += q
        self.plan = {"groups": groups, "used": False}
        kw = kwargs.get("kwargs")
        if isinstance(kw, dict):
            kw[PLAN_KEY] = self.plan
        # What a plain attention function would get: the first group's tensors (wrong shapes for a
        # mixed layer, which the check above turns into a clear error at the next layer).
        return groups[0][1], groups[0][2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # The attention function builds its own masks; this only sizes the model's (unused) one.
        return self.cumulative_length + query_length, 0

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return -1

    def kv_bytes(self) -> int:
        return self.full.nbytes() + self.stream.nbytes()

    def used_slots(self) -> int:
        """Key slots in use (per batch row, summed over KV heads): the policy's memory, not the allocation."""
        n = self.cumulative_length
        return len(self.retrieval) * self.full.used_slots(n) + len(self.streaming) * self.stream.used_slots(n)

    def reset(self) -> None:
        self.stream.k = self.stream.v = self.full.k = self.full.v = None
        self.cumulative_length, self.plan, self.is_initialized = 0, None, False

    def _map_batch(self, fn) -> None:
        for store in (self.stream, self.full):
            if store.k is not None:
                store.k, store.v = fn(store.k), fn(store.v)

    def crop(self, tokens_to_remove: int) -> None:
        raise SinkholeError("HeadAwareSinkCache cannot be cropped: assisted decoding is not supported")


def take(t: torch.Tensor, idx) -> torch.Tensor:
    """Heads `idx` (None: all, a slice, or an index tensor) along dim 1."""
    if idx is None:
        return t
    return t[:, idx] if isinstance(idx, slice) else t.index_select(1, idx)


def head_aware_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """AttentionInterface function: one SDPA call per head group of the layer's plan.

    query (B, Hq, q, D); returns (output (B, q, Hq, Dv), None). Without a plan (another cache, or
    none) it is transformers' SDPA.
    """
    plan = kwargs.pop(PLAN_KEY, None)
    if plan is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if kwargs.get("softcap") is not None:
        raise SinkholeError("HeadAwareSinkCache does not support attention logit softcapping")
    plan["used"] = True
    B, Hq, q, D = query.shape
    n_kv = sum(g[1].shape[1] for g in plan["groups"])
    G = Hq // n_kv
    qg = query.reshape(B, n_kv, G, q, D)
    out = None
    for idx, keys, values, mask in plan["groups"]:
        h = keys.shape[1]
        qh = take(qg, idx).reshape(B, h, G * q, D)  # GQA packed: the G query heads of a KV head are extra rows
        m = None if mask is None else mask.repeat(G, 1)  # (G*q, N): rows ordered (g, t)
        o = torch.nn.functional.scaled_dot_product_attention(qh, keys, values, attn_mask=m, scale=scaling)
        o = o.reshape(B, h, G, q, values.shape[-1])
        if idx is None:
            out = o
        else:
            if out is None:
                out = o.new_empty(B, n_kv, G, q, values.shape[-1])
            if isinstance(idx, slice):
                out[:, idx] = o
            else:
                out.index_copy_(1, idx, o)
    return out.reshape(B, Hq, q, -1).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the attention function (idempotent) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, head_aware_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    return ATTN_NAME


@contextmanager
def head_aware_attention(model: torch.nn.Module):
    """Run `model` with the head-aware attention function for the duration of the block."""
    from sinkhole.probe.hooks import attention_implementation

    with attention_implementation(model, register()):
        yield model


def kv_head_count(model: torch.nn.Module) -> int:
    config = model.config.get_text_config(decoder=True)
    return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)


class HeadAwareSinkCache(Cache):
    """Per (layer, KV head): sinks + window (streaming) or everything (retrieval).

    retrieval: per layer, the KV heads that keep everything (their layer's own window on sliding
    layers). n_sink, window: what streaming heads of global layers keep (sliding layers: a window
    of `window`, no sinks). `HeadAwareSinkCache(retrieval=[[]] * L, ...)` is sinks + window for
    every head; n_sink=0 makes it window-only.
    """

    def __init__(self, retrieval: list[list[int]], n_sink: int = 4, window: int = 256, *, model: torch.nn.Module):
        from sinkhole.profiles.streaming import layer_kinds

        if model is None:
            raise SinkholeError("HeadAwareSinkCache needs the model (for its layer types): ..., model=model)")
        if n_sink < 0 or window < 1:
            raise SinkholeError(f"need n_sink >= 0 and window >= 1 (got {n_sink}, {window})")
        kinds, windows = layer_kinds(model)
        if len(retrieval) != len(kinds):
            raise SinkholeError(f"retrieval lists {len(retrieval)} layers; the model has {len(kinds)}")
        self.n_sink, self.window, self.kinds, self.sliding = n_sink, window, kinds, windows
        self.n_kv_heads = kv_head_count(model)
        self.retrieval = [sorted(set(int(h) for h in r)) for r in retrieval]
        layers = []
        for kind, sw, r in zip(kinds, windows, self.retrieval):
            if kind == "global":
                layers.append(HeadAwareLayer(self.n_kv_heads, r, _Ring(n_sink, window), _Grow()))
            else:
                layers.append(
                    HeadAwareLayer(self.n_kv_heads, r, _Ring(0, min(window, sw)), _Ring(0, sw), is_sliding=True)
                )
        super().__init__(layers=layers)

    @classmethod
    def from_profile(
        cls,
        profile,
        *,
        model: torch.nn.Module,
        window: int = 256,
        budget: float = 0.5,
        length: int | None = None,
        n_sink: int | None = None,
        random_heads: int | None = None,
        rank_by: str = "copy",
    ) -> HeadAwareSinkCache:
        """Retrieval heads chosen from a profile's streaming scores to fit `budget` x dense KV memory.

        Memory is counted in key slots at `length` tokens (default: the model's trained context):
        dense holds `length` per global-layer head and min(length, own window) per sliding-layer
        head. Heads are upgraded from streaming to retrieval in order of increasing streaming score
        while the total fits. n_sink defaults to the sinks the scores were measured with
        (`streaming.n_sink`). random_heads=seed: the control, the same number of retrieval heads
        per layer kind, picked at random. rank_by: "copy" (default) keeps first the heads with the
        least attention inside sinks + window at copy queries (`streaming.copy_scores`),
        "retrieval" the heads with the most
        attention on the token to copy (`retrieval_scores`), "all" the band share over every
        query (`scores`); a profile without the chosen scores falls back to `scores`.
        """
        from sinkhole.profiles.streaming import layer_kinds

        stream = getattr(profile, "streaming", None)
        if not stream or not stream.get("scores"):
            raise SinkholeError(
                "the profile has no streaming scores: make it with `sinkhole profile` "
                "(sinkhole >= the head-aware cache) or use a shipped one"
            )
        kinds, windows = layer_kinds(model)
        if rank_by not in ("retrieval", "copy", "all"):
            raise SinkholeError(f"rank_by must be 'retrieval', 'copy' or 'all' (got {rank_by!r})")
        scores = stream["scores"]
        if rank_by == "retrieval" and stream.get("retrieval_scores"):
            scores = [[1.0 - v for v in row] for row in stream["retrieval_scores"]]  # low = keep first
        elif rank_by == "copy" and stream.get("copy_scores"):
            scores = stream["copy_scores"]
        H = kv_head_count(model)
        if len(scores) != len(kinds) or any(len(row) != H for row in scores):
            raise SinkholeError(
                f"the profile's streaming scores are {len(scores)} layers x {len(scores[0])} heads; "
                f"the model has {len(kinds)} x {H}"
            )
        n_sink = int(stream.get("n_sink", profile.pinned_slots)) if n_sink is None else n_sink
        length = length or getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None) or 4096
        picked = select_retrieval_heads(scores, kinds, windows, n_sink, window, budget, length, random_heads)
        return cls(picked, n_sink, window, model=model)

    def kv_bytes(self) -> int:
        """Bytes allocated for keys and values (ring slots and the retrieval buffers' spare capacity included)."""
        return sum(layer.kv_bytes() for layer in self.layers)

    def used_slots(self) -> int:
        return sum(layer.used_slots() for layer in self.layers)

    def summary(self) -> dict:
        return dict(
            n_sink=self.n_sink,
            window=self.window,
            retrieval=self.retrieval,
            retrieval_heads=sum(len(r) for r in self.retrieval),
            kv_heads=self.n_kv_heads * len(self.layers),
        )


def slot_costs(
    kinds: list[str], windows: list[int | None], n_sink: int, window: int, length: int
) -> tuple[list[int], list[int]]:
    """Per layer: key slots one KV head holds at `length` tokens as streaming, and as retrieval (= dense)."""
    stream, full = [], []
    for kind, sw in zip(kinds, windows):
        if kind == "global":
            stream.append(min(length, n_sink + window)), full.append(length)
        else:
            stream.append(min(length, window, sw)), full.append(min(length, sw))
    return stream, full


def select_retrieval_heads(
    scores: list[list[float]],
    kinds: list[str],
    windows: list[int | None],
    n_sink: int,
    window: int,
    budget: float,
    length: int,
    random_heads: int | None = None,
) -> list[list[int]]:
    """Per layer, the KV heads to keep in full so that slots <= budget x dense slots at `length` tokens."""
    import random

    stream, full = slot_costs(kinds, windows, n_sink, window, length)
    H = len(scores[0])
    dense = H * sum(full)
    used = H * sum(stream)
    if used > budget * dense + 1e-9:
        raise SinkholeError(
            f"budget {budget:.0%} of dense KV memory is below what sinks + window alone take "
            f"({used / dense:.0%} at {length} tokens): raise --budget or lower --window"
        )
    heads = sorted(
        ((scores[l][h], l, h) for l in range(len(kinds)) for h in range(H)), key=lambda x: (x[0], x[1], x[2])
    )
    picked: list[list[int]] = [[] for _ in kinds]
    for _, l, h in heads:
        extra = full[l] - stream[l]
        if extra > 0 and used + extra <= budget * dense + 1e-9:
            picked[l].append(h)
            used += extra
    if random_heads is not None:  # the control: same count per layer kind, random heads
        rng = random.Random(random_heads)
        out: list[list[int]] = [[] for _ in kinds]
        for kind in set(kinds):
            pool = [(l, h) for l in range(len(kinds)) if kinds[l] == kind for h in range(H)]
            n = sum(len(picked[l]) for l in range(len(kinds)) if kinds[l] == kind)
            for l, h in rng.sample(pool, n):
                out[l].append(h)
        picked = out
    return [sorted(p) for p in picked]
