"""HeadAwareSinkCache: streaming KV heads keep sinks + local sinks + a window, retrieval KV heads keep
everything.

DuoAttention (Xiao et al., ICLR 2025) showed that only some heads need the whole context; the
others attend to the sinks and the recent tokens. DuoAttention finds them by optimisation; here a
profile's measured streaming scores (`sinkhole.profiles.stream_scores`) rank them
(`sinkhole.cache.head_plan`), and the heads that look most like retrieval heads keep everything, as
many as a KV memory budget allows.

    profile = load_profile("smollm2-135m")
    cache = HeadAwareSinkCache.from_profile(profile, model=model, budget=0.5, length=2048)
    with head_aware_attention(model):
        model.generate(ids, cache=cache, max_new_tokens=200)
    cache.memory_plan.line()  # what it holds at 2048 tokens: bytes and slots against dense
    cache.kv_bytes()

Design decisions:

- The budget is in bytes (`head_plan.MemoryPlan`): what the cache allocates at `length` tokens,
  every buffer and the local sinks' bookkeeping included, against a dense cache's keys and values
  there. Heads cost what their store allocates (`kv_stores` `planned_nbytes`), so a plan that says
  50% holds 50%, not 50% of the key slots in buffers that doubled past the stream.
- Storage per layer (`sinkhole.cache.kv_stores`): retrieval heads in one growing buffer that
  doubles when full (amortised O(1) per token, never a per-step concatenation of the cache) up to
  the planned length (`length`), then grows to exactly what it holds;
  streaming heads in a preallocated ring of S sinks, M local sinks and W window slots. Local sinks
  are the keys that drew the most attention while in the window (the sinks a model forms again
  once its first token is out of reach; measured on Gemma-3's sliding layers, docs/cache.md).
  Nothing is re-rotated: positions stay the model's own (DuoAttention's choice), which is exact
  within the trained context (this cache is for long-context recall, not for running past the
  context as `SinkCache` does).
- With `select`, retrieval heads keep the keys the question chooses instead of everything
  (`kv_select.Select`: SnapKV's rule, per head): a share of the prompt on global layers, the same
  share of their window on sliding ones (`kv_select.SlidingSelect`), for models whose heads a
  budget cannot hold whole (docs/cache.md, "Keys chosen by the question"). The choice needs the
  prompt's end, so such a cache is told the prompt's length, and holds what dense holds in those
  heads until then. With `fill_whole`, what the selections leave of the budget keeps the plan's
  first heads whole (a third group per layer): a selection serves the question at the prompt's
  end, and a whole head still reads a span back or the text's far context after it.
- Sliding-window layers (Gemma-3's local layers) never saw their first tokens leave the window in
  training, so their streaming heads keep no first-token sinks, only local sinks and a window, and
  their retrieval heads keep the layer's own window (or, with `select`, a share of it).
- Heads of different lengths cannot share one attention call, so the cache pairs with an attention
  function (`sinkhole.cache.head_attention`) registered with transformers' `AttentionInterface`
  ("sinkhole_head_aware", installed by the `head_aware_attention(model)` context manager, removed
  in `finally`). The cache layer
  hands its per-group tensors to it through the `kwargs` dict that transformers passes from
  `Cache.update` to the attention interface (no globals, no patched model code). Forgetting the
  context manager raises a SinkholeError at the next layer instead of computing garbage.
- Each group is one SDPA call over its stored tensors with the mask its store gives (none for a
  plain decode step: every stored key is visible and order does not matter to softmax; chunks get
  masks from the keys' absolute positions, so a chunked prefill is exact). Groups with local sinks
  compute their probabilities explicitly, because the store needs each key's attention.
- Few torch ops per layer: on a shared CPU each parallel op waits for a descheduled thread, so a
  chunk's time follows the op count (benchmarks/head_aware_speed.py). Masks depend only on
  positions and are built once per forward (`kv_stores.ForwardMemo`), the local-sink ring's on
  (q, N); softmax and column sums are one pass of the CPU kernel.
- Batches: rows of one length, no padding (as SinkCache).
"""

from __future__ import annotations

import warnings

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from sinkhole.cache.head_attention import (  # noqa: F401 (the attention function's public names, here as before)
    ATTN_NAME,
    PLAN_KEY,
    attention_and_colsum,
    head_aware_attention,
    head_aware_attention_forward,
    take,
)
from sinkhole.cache.head_plan import (
    DEFAULT_LOCAL_SINKS,
    DEFAULT_RANK_BY,
    DEFAULT_WINDOW,
    MemoryPlan,
    check_streams_fit,
    loss_deltas,
    plan_by_loss,
    rank_scores,
    reach_layers,
    select_retrieval_heads,
    shuffle_states,
    slot_costs,
)
from sinkhole.cache.head_plan import fill_whole as fill_whole_heads
from sinkhole.cache.kv_select import Selection, selection_for
from sinkhole.cache.kv_stores import ForwardMemo, layer_stores, whole_store
from sinkhole.cache.sink_cache import BatchOpsMixin
from sinkhole.errors import SinkholeError


class HeadAwareLayer(BatchOpsMixin, CacheLayerMixin):
    """One layer: `retrieval` KV heads in the store `full` (a Grow or a `kv_select.Select`, or a
    Ring of the layer's own window on sliding layers), the other KV heads in the store `stream` (a
    Ring of sinks + window, or a LocalSinkRing); with `whole` (KV heads, and their store
    `whole_store`: everything, while `full` selects) a third group. Stores are in
    `sinkhole.cache.kv_stores`."""

    is_compileable = False
    is_croppable = False

    def __init__(
        self,
        n_kv_heads: int,
        retrieval: list[int],
        stream,
        full,
        is_sliding: bool = False,
        memo=None,
        whole: list[int] = (),
        whole_store=None,
    ):
        super().__init__()
        self.is_sliding = is_sliding
        self.n_kv_heads = n_kv_heads
        self.retrieval, self.whole = sorted(set(int(h) for h in retrieval)), sorted(set(int(h) for h in whole))
        if any(not 0 <= h < n_kv_heads for h in self.retrieval + self.whole):
            raise SinkholeError(f"KV heads {self.retrieval + self.whole} out of range for {n_kv_heads} KV heads")
        if set(self.whole) & set(self.retrieval) or (self.whole and whole_store is None):
            raise SinkholeError("whole heads need their own store and cannot also be retrieval heads")
        self.streaming = [h for h in range(n_kv_heads) if h not in self.retrieval + self.whole]
        self.stream, self.full = stream, full
        # (heads, store) per group, the stores' order fixed; empty groups are skipped when run
        self.groups = [(self.whole, whole_store), (self.retrieval, full), (self.streaming, stream)]
        self.cumulative_length = 0
        self.plan = None
        self._idx: dict = {}
        self.memo = memo or ForwardMemo()  # the cache's layers share one: masks once per forward

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def _index(self, heads: list[int], device):
        """How to pick a head subset: None (every head), a slice (evenly spaced heads: views, no
        gather; every subset of 3 KV heads is one), or an index tensor."""
        if len(heads) == self.n_kv_heads:
            return None
        step = heads[1] - heads[0] if len(heads) > 1 else 1
        if heads == list(range(heads[0], heads[-1] + 1, step)):
            return slice(heads[0], heads[-1] + 1, step)
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
        self.memo.start(n, q)
        groups = []
        for heads, store in self.groups:
            if not heads:
                continue
            idx = self._index(heads, key_states.device)
            k, v = take(key_states, idx), take(value_states, idx)
            keys, values, mask, observe = store.update(k, v, n, self.memo)
            groups.append((idx, keys, values, mask, observe))
        self.cumulative_length += q
        self.plan = {"groups": groups, "used": False, "memo": self.memo}
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

    def _stores(self):
        return [store for _, store in self.groups if store is not None]

    def kv_bytes(self) -> int:
        return sum(store.nbytes() for store in self._stores())

    def used_slots(self) -> int:
        """Key slots in use (per batch row, summed over KV heads): the policy's memory, not the allocation."""
        return sum(len(heads) * store.used_slots(self.cumulative_length) for heads, store in self.groups if heads)

    def reset(self) -> None:
        for store in self._stores():
            store.reset()
        self.cumulative_length, self.plan, self.is_initialized = 0, None, False

    def _map_batch(self, fn) -> None:
        for store in self._stores():
            store.map_batch(fn)

    def crop(self, tokens_to_remove: int) -> None:
        raise SinkholeError("HeadAwareSinkCache cannot be cropped: assisted decoding is not supported")


def kv_head_count(model: torch.nn.Module) -> int:
    config = model.config.get_text_config(decoder=True)
    return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)


def kv_slot_bytes(model: torch.nn.Module) -> tuple[int, torch.dtype]:
    """Bytes of one key + one value of one KV head, and the dtype they are cached in (the model's:
    transformers caches the projections as the model computes them)."""
    config = model.config.get_text_config(decoder=True)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dtype = getattr(model, "dtype", None) or next(model.parameters()).dtype
    return 2 * int(head_dim) * dtype.itemsize, dtype


class HeadAwareSinkCache(Cache):
    """Per (layer, KV head): sinks + window (streaming) or everything (retrieval).

    retrieval: per layer, the KV heads that keep everything (their layer's own window on sliding
    layers). n_sink, window: what streaming heads of global layers keep (sliding layers: a window
    of `window`, no sinks). local_sinks: M extra slots per streaming head for the keys that received
    the most attention while in the window (`kv_stores.LocalSinkRing`; 0 = none).
    `HeadAwareSinkCache(retrieval=[[]] * L, ...)` is sinks + window for every head; n_sink=0 makes
    it window-only. length: the tokens the retrieval buffers are sized for (`kv_stores.Grow`; None:
    they double without limit). select: retrieval heads keep the keys a `kv_select.Selection`
    chooses at the prompt's end instead of everything (on sliding layers unless its `sliding` is
    False); whole: per layer, KV heads (not in `retrieval`) that keep everything beside them.
    `memory_plan`: the `MemoryPlan` of a cache made by `from_profile`.
    """

    def __init__(
        self,
        retrieval: list[list[int]],
        n_sink: int = 4,
        window: int = DEFAULT_WINDOW,
        *,
        model: torch.nn.Module,
        local_sinks: int = 0,
        length: int | None = None,
        select: Selection | None = None,
        whole: list[list[int]] | None = None,
    ):
        from sinkhole.profiles.stream_scores import layer_kinds
        from sinkhole.validate import like_option, torch_module

        # The CLI's rules (sinkhole.validate), under the API's names.
        model, _ = torch_module(model, "HeadAwareSinkCache")
        n_sink = like_option(n_sink, "n_sink", "stream_sinks")
        window = like_option(window, "window", "window")
        local_sinks = like_option(local_sinks, "local_sinks", "local_sinks")
        length = like_option(length, "length", "tokens", optional=True)
        kinds, windows = layer_kinds(model)
        self.n_kv_heads = kv_head_count(model)
        self.retrieval = retrieval_lists(retrieval, len(kinds), self.n_kv_heads)
        self.whole = retrieval_lists(whole or [[]] * len(kinds), len(kinds), self.n_kv_heads)
        self.n_sink, self.window, self.local_sinks = n_sink, window, local_sinks
        self.kinds, self.sliding, self.length, self.select = kinds, windows, length, select
        self.memory_plan: MemoryPlan | None = None
        layers, memo = [], ForwardMemo()
        for kind, sw, r, w in zip(kinds, windows, self.retrieval, self.whole):
            stream, full = layer_stores(kind, sw, n_sink, window, local_sinks, length, select)
            everything = whole_store(kind, sw, length) if w else None
            layers.append(HeadAwareLayer(self.n_kv_heads, r, stream, full, kind != "global", memo, w, everything))
        super().__init__(layers=layers)

    @classmethod
    def from_profile(
        cls,
        profile,
        *,
        model: torch.nn.Module,
        window: int = DEFAULT_WINDOW,
        budget: float = 0.5,
        length: int | None = None,
        n_sink: int | None = None,
        local_sinks: int = DEFAULT_LOCAL_SINKS,
        random_heads: int | None = None,
        rank_by: str = DEFAULT_RANK_BY,
        select: float | Selection | None = None,
        prompt_length: int | None = None,
        fill_whole: bool = False,
    ) -> HeadAwareSinkCache:
        """Retrieval heads chosen from a profile's streaming scores to fit `budget` x dense KV bytes.

        Memory is counted in bytes allocated at `length` tokens (default: the model's trained
        context; pass the stream's length): dense holds `length` keys and values per global-layer
        head and min(length, own window) per sliding-layer head; a streaming head its store (sinks,
        local sinks and window, with the local sinks' bookkeeping); a retrieval head its buffer,
        sized to `length`. Heads are upgraded from streaming to retrieval in the order `rank_by`
        gives (`head_plan.rank_scores`) while the total fits; a budget that sinks + window alone
        pass is refused (SinkholeError). The cache's `memory_plan` (`head_plan.MemoryPlan`) says
        what it holds. n_sink defaults to the sinks the scores were measured with
        (`streaming.n_sink`). random_heads=seed: the control, the same number of retrieval heads
        per layer kind, picked at random. select=share, with prompt_length (< length): a retrieval head
        of a global layer keeps share x prompt_length keys chosen by the prompt's last queries
        (`kv_select`, SnapKV's rule), one of a sliding layer share x the keys its window shows the
        last query, each plus the length - prompt_length tokens after, not everything, and costs
        that in the plan. select=Selection(...): that, spelled out (`sliding=False`: sliding
        layers' retrieval heads keep their whole window, the earlier rule). fill_whole (with
        select): what the selections leave of the budget keeps selecting heads whole, in the same
        order (`head_plan.fill_whole`; the plan's `whole`). rank_by="loss": no order; each head
        streams, selects or keeps everything as the profile's measured loss deltas
        (`streaming.loss`) say, the least summed loss within the budget (`head_plan.plan_by_loss`;
        it decides the whole heads itself, so fill_whole does nothing); with select, on a model
        with sliding layers, no global layer's head streams (`head_plan.reach_layers`).
        """
        from sinkhole.profiles.stream_scores import layer_kinds
        from sinkhole.validate import like_option, profile_for, torch_module

        # The CLI's rules (sinkhole.validate), under the API's names, before anything is computed.
        model, loaded = torch_module(model, "HeadAwareSinkCache.from_profile")
        window = like_option(window, "window", "window")
        budget = like_option(budget, "budget", "budget")
        length = like_option(length, "length", "tokens", optional=True)
        n_sink = like_option(n_sink, "n_sink", "stream_sinks", optional=True)
        local_sinks = like_option(local_sinks, "local_sinks", "local_sinks")
        random_heads = like_option(random_heads, "random_heads", "seed", optional=True)
        selection = select
        if select is not None and not isinstance(select, Selection):
            selection = selection_for(select, prompt_length, length)
        profile = profile_for(profile, model, loaded)  # numbers first, as the CLI checks its options first
        stream = profile.streaming
        if not stream or not stream.get("scores"):
            raise SinkholeError(
                "the profile has no streaming scores: make it with `sinkhole profile` "
                "(sinkhole >= the head-aware cache) or use a shipped one"
            )
        kinds, windows = layer_kinds(model)
        H = kv_head_count(model)
        # the loss plan reads the profile's measured deltas (checked there), the others an order of heads
        loss = loss_deltas(stream, len(kinds), H) if rank_by == "loss" else None
        scores = loss["stream"] if loss else rank_scores(stream, rank_by)
        if len(scores) != len(kinds) or any(len(row) != H for row in scores):
            raise SinkholeError(
                f"the profile's streaming scores are {len(scores)} layers x {len(scores[0])} heads; "
                f"the model has {len(kinds)} x {H}"
            )
        n_sink = int(stream.get("n_sink", profile.pinned_slots)) if n_sink is None else n_sink
        length_from = "length" if length else "trained context"
        length = length or getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None) or 4096
        if length_from != "length":  # measured: SmolLM2 at 0.5 planned for 8192 held 108% of dense at 1030 tokens
            warnings.warn(
                f"HeadAwareSinkCache.from_profile: no length given, so the budget is planned at {length} tokens "
                "(the trained context); a shorter stream holds more than budget x its dense KV bytes: "
                "pass length=<the stream's length>",
                stacklevel=2,
            )
        slot_bytes, dtype = kv_slot_bytes(model)
        stores = [
            layer_stores(kind, sw, n_sink, window, local_sinks, length, selection) for kind, sw in zip(kinds, windows)
        ]
        # per layer, what one streaming and one whole KV head allocate at `length`: the stores' own count
        head_bytes = tuple([s.planned_nbytes(length, slot_bytes) for s in pair] for pair in zip(*stores))
        stream_slots, dense_slots = slot_costs(kinds, windows, n_sink, window, length, local_sinks)
        full_slots = [s.used_slots(length) for _, s in stores]  # a selecting head holds fewer than dense
        dense_bytes = H * sum(dense_slots) * slot_bytes
        # a head kept whole beside selecting ones: everything (its layer's own window on sliding layers)
        whole_bytes = [whole_store(k, sw, length).planned_nbytes(length, slot_bytes) for k, sw in zip(kinds, windows)]
        whole: list[list[int]] = [[] for _ in kinds]
        if loss:  # each head's state by measured loss; it decides the whole heads itself
            check_streams_fit(H * sum(head_bytes[0]), dense_bytes, budget, length)
            room = budget * dense_bytes - H * sum(head_bytes[0])
            costs = (head_bytes[0], head_bytes[1], whole_bytes) if selection else (head_bytes[0], None, head_bytes[1])
            states = plan_by_loss(loss, costs, room, reach_layers(kinds, selection is not None))
            if random_heads is not None:
                states = shuffle_states(states, kinds, random_heads)
            keep = "select" if selection else "whole"
            picked = [[h for h, st in enumerate(row) if st == keep] for row in states]
            if selection:
                whole = [[h for h, st in enumerate(row) if st == "whole"] for row in states]
        else:
            picked = select_retrieval_heads(scores, kinds, head_bytes, budget, length, random_heads, dense=dense_bytes)

        def total(stream_cost, select_cost, whole_cost):
            return sum(
                len(r) * f + len(w) * e + (H - len(r) - len(w)) * s
                for r, w, s, f, e in zip(picked, whole, stream_cost, select_cost, whole_cost)
            )

        if fill_whole and selection is not None and not loss:
            room = budget * dense_bytes - total(*head_bytes, whole_bytes)
            whole = fill_whole_heads(scores, picked, (head_bytes[1], whole_bytes), room, random_heads)
            picked = [[h for h in r if h not in w] for r, w in zip(picked, whole)]
        cache = cls(
            picked, n_sink, window, model=model, local_sinks=local_sinks, length=length, select=selection, whole=whole
        )
        cache.memory_plan = MemoryPlan(
            length=length,
            length_from=length_from,
            budget=budget,
            kv_bytes=total(*head_bytes, whole_bytes),
            dense_bytes=dense_bytes,
            kv_slots=total(stream_slots, full_slots, dense_slots),
            dense_slots=H * sum(dense_slots),
            slot_bytes=slot_bytes,
            dtype=str(dtype).replace("torch.", ""),
            retrieval_heads=sum(map(len, picked)) + sum(map(len, whole)),
            kv_heads=H * len(kinds),
            retrieval=picked,
            n_sink=n_sink,
            window=window,
            local_sinks=local_sinks,
            rank_by=rank_by,
            random_heads=random_heads,
            # `sliding` as it applies here: a model without sliding layers has none to select in
            select=None
            if selection is None
            else {**selection.to_dict(), "sliding": selection.sliding and "sliding" in kinds},
            whole=whole if any(whole) else None,
        )
        return cache

    def kv_bytes(self) -> int:
        """Bytes allocated for keys and values (ring slots, the retrieval buffers' spare capacity and the
        local sinks' bookkeeping included)."""
        return sum(layer.kv_bytes() for layer in self.layers)

    def used_slots(self) -> int:
        return sum(layer.used_slots() for layer in self.layers)

    def summary(self) -> dict:
        return dict(
            n_sink=self.n_sink,
            window=self.window,
            local_sinks=self.local_sinks,
            retrieval=self.retrieval,
            retrieval_heads=sum(len(r) for r in self.retrieval),  # with select: the selecting ones
            whole=self.whole,
            kv_heads=self.n_kv_heads * len(self.layers),
            plan=None if self.memory_plan is None else self.memory_plan.to_dict(),
        )


def retrieval_lists(retrieval, n_layers: int, n_kv_heads: int) -> list[list[int]]:
    """Per layer, the sorted KV heads that keep everything: one list of heads in [0, n_kv_heads)
    per layer, checked (a SinkholeError naming what is wrong, never a TypeError)."""
    from sinkhole.validate import integer

    if isinstance(retrieval, (str, bytes)) or not isinstance(retrieval, (list, tuple)):
        raise SinkholeError(
            f"retrieval must be a list with one list of KV heads per layer ({n_layers} layers, "
            f"e.g. [[]] * {n_layers} for none), not {type(retrieval).__name__} {retrieval!r:.40}"
        )
    if len(retrieval) != n_layers:
        raise SinkholeError(f"retrieval lists {len(retrieval)} layers; the model has {n_layers}")
    out = []
    for layer, heads in enumerate(retrieval):
        if isinstance(heads, (str, bytes)) or not isinstance(heads, (list, tuple, set)):
            raise SinkholeError(f"retrieval[{layer}] must be a list of KV heads, not {heads!r:.40}")
        out.append(sorted({integer(h, f"retrieval[{layer}] head", lo=0, hi=n_kv_heads - 1) for h in heads}))
    return out
