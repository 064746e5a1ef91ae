"""SnapKVCache: token eviction at the end of the prompt, by the attention of the prompt's last queries.

SnapKV (Li et al., 2024): the last `window` queries of the prompt (the "observation window", which
holds the question) show which earlier keys the answer will need. Per KV head, each prompt key
before the window is scored by the attention those queries give it (softmax probabilities summed
over the window's queries, averaged over the query heads that share the KV head), the scores are
smoothed by an average pool of width `kernel`, and the `capacity - window` best keys are kept with
the window itself (`sinkhole.cache.kv_select`: `window_scores`, `select_keys`).
Tokens decoded afterwards are appended to what was kept; nothing is evicted again. kvpress's
SnapKVPress is the same rule (window 64, kernel 5, average pool).

Design decisions (transformers 5.x, no patched model code):

- A `transformers.Cache` whose global layers are `SnapKVLayer` (a `CacheLayerMixin`); sliding-window
  layers (Gemma-3's local layers) are transformers' own `DynamicSlidingWindowLayer`, with their own
  window or a shorter one (`sliding_keep`: on Gemma-3-270M 15 of 18 layers are sliding, so a budget
  of half of dense's bytes cannot leave them whole).
- The cache is told the prompt's length. The forward whose chunk ends at that length compresses:
  its layer hands a callback to the attention function through the `kwargs` dict transformers passes
  from `Cache.update` to the attention interface (the head-aware cache's channel). The function
  ("sinkhole_snapkv", installed by `snapkv_attention(model)`, removed in `finally`) computes the
  chunk's attention with transformers' SDPA over every prompt key, then the window queries'
  probabilities, and calls back; the layer keeps its selection. The chunk must end exactly at the
  prompt's end and hold at least `window` queries (a SinkholeError says so otherwise).
- Positions: keys are cached after RoPE, so a kept key keeps its true distance to every later query
  and nothing is re-rotated. The kept keys are laid out in position order and the model's causal
  mask is told (`get_mask_sizes`) that they sit just before the query, so it shows all of them.
- Memory: during the prompt the layer holds every key (SnapKV prefills densely); after compression
  one buffer of `capacity + max_new` slots per head (`max_new`: the tokens the caller will decode;
  more doubles the buffer, which `kv_bytes()` then shows).
- Batches: rows of one length, no padding; each row and head keeps its own keys.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicSlidingWindowLayer, get_layer_types_and_kwargs

from sinkhole.cache.kv_select import select_keys, window_scores
from sinkhole.cache.sink_cache import BatchOpsMixin, cache_nbytes
from sinkhole.errors import SinkholeError
from sinkhole.kvbench import SNAP_KERNEL as DEFAULT_KERNEL
from sinkhole.kvbench import SNAP_WINDOW as DEFAULT_WINDOW

ATTN_NAME = "sinkhole_snapkv"
PLAN_KEY = "sinkhole_snapkv_observe"


class SnapKVLayer(BatchOpsMixin, CacheLayerMixin):
    """One global layer: every key until the prompt ends, then `capacity` selected keys per head plus
    what is decoded after. `positions` (B, H, held) says which token each held slot is."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, capacity: int, prompt_length: int, window: int, kernel: int, max_new: int = 0):
        super().__init__()
        self.capacity, self.prompt_length, self.window, self.kernel = capacity, prompt_length, window, kernel
        self.max_new = max_new
        self.reset()

    def reset(self) -> None:
        self.keys = self.values = self.positions = None
        self.held = 0  # slots in use after compression
        self.compressed = self._armed = False
        self.cumulative_length = 0
        self.is_initialized = False

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._armed:  # the last forward asked to compress and nobody scored it
            raise SinkholeError(
                "SnapKVCache needs its attention function: run the model inside `with snapkv_attention(model):`"
            )
        n, q = self.cumulative_length, key_states.shape[-2]
        self.cumulative_length += q
        if self.compressed:
            return self._append(key_states, value_states)
        self.keys = key_states if self.keys is None else torch.cat((self.keys, key_states), dim=-2)
        self.values = value_states if self.values is None else torch.cat((self.values, value_states), dim=-2)
        P = self.prompt_length
        if n < P < n + q:
            raise SinkholeError(f"SnapKVCache: a chunk ran past the prompt's end ({P}): end a forward there")
        if n + q == P and P > self.capacity:
            if q < self.window:
                raise SinkholeError(f"SnapKVCache: the prompt's last chunk has {q} tokens, fewer than the window")
            kw = kwargs.get("kwargs")
            if not isinstance(kw, dict):
                raise SinkholeError("SnapKVCache needs transformers >= 5 (attention kwargs from the cache)")
            kw[PLAN_KEY] = (self.window, self.compress)
            self._armed = True
        return self.keys, self.values

    def compress(self, scores: torch.Tensor) -> None:
        """Keep the selected keys (`select_keys` on the window scores (B, H, N)) in a fresh buffer."""
        self._armed = False
        pos = select_keys(scores, self.capacity, self.window, self.kernel)  # (B, H, C)
        B, H, C = pos.shape
        slots = C + self.max_new
        buf_k = self.keys.new_empty(B, H, slots, self.keys.shape[-1])
        buf_v = self.values.new_empty(B, H, slots, self.values.shape[-1])
        buf_k[:, :, :C] = self.keys.gather(2, pos[..., None].expand(-1, -1, -1, self.keys.shape[-1]))
        buf_v[:, :, :C] = self.values.gather(2, pos[..., None].expand(-1, -1, -1, self.values.shape[-1]))
        self.positions = torch.full((B, H, slots), -1, dtype=torch.long, device=pos.device)
        self.positions[:, :, :C] = pos
        self.keys, self.values, self.held, self.compressed = buf_k, buf_v, C, True

    def _append(self, k: torch.Tensor, v: torch.Tensor):
        q, m = k.shape[-2], self.held + k.shape[-2]
        if m > self.keys.shape[2]:  # decoded past max_new: double (kv_bytes shows it)
            grow = max(m, 2 * self.keys.shape[2])
            self.keys, self.values, self.positions = (
                torch.cat((t, t.new_full((*t.shape[:2], grow - t.shape[2], *t.shape[3:]), fill)), dim=2)
                for t, fill in ((self.keys, 0), (self.values, 0), (self.positions, -1))
            )
        self.keys[:, :, self.held : m] = k
        self.values[:, :, self.held : m] = v
        new = torch.arange(self.cumulative_length - q, self.cumulative_length, device=k.device)
        self.positions[:, :, self.held : m] = new
        self.held = m
        return self.keys[:, :, :m], self.values[:, :, :m]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """Held keys map to the positions just before the query (the causal mask shows them all)."""
        if not self.compressed:
            return self.cumulative_length + query_length, 0
        return self.held + query_length, self.cumulative_length - self.held

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return -1

    def kv_bytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes

    def kept_positions(self) -> torch.Tensor | None:
        """(B, H, held) the token position of each held slot (None before compression)."""
        return None if self.positions is None else self.positions[:, :, : self.held]

    def _map_batch(self, fn) -> None:
        for name in ("keys", "values", "positions"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, fn(t))

    def crop(self, tokens_to_remove: int) -> None:
        raise SinkholeError("SnapKVCache cannot be cropped: assisted decoding is not supported")


class SnapKVCache(Cache):
    """SnapKV on every global layer (module docstring): `capacity` keys per head kept at the end of a
    `prompt_length`-token prompt (the last `window` included), `max_new` slots for what follows.
    sliding_keep: the most recent keys a sliding-window layer keeps (None: its own window, as dense)."""

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        capacity: int,
        prompt_length: int,
        window: int = DEFAULT_WINDOW,
        kernel: int = DEFAULT_KERNEL,
        max_new: int = 0,
        sliding_keep: int | None = None,
    ):
        from sinkhole.validate import integer

        integer(window, "window", lo=1)
        integer(kernel, "kernel", lo=1)
        integer(capacity, "capacity", lo=window + 1)
        integer(prompt_length, "prompt_length", lo=window)
        integer(max_new, "max_new", lo=0)
        config = model.config.get_text_config(decoder=True)
        layers = []
        for kind, kw in zip(*get_layer_types_and_kwargs(config)):
            if kind == "full_attention":
                layers.append(SnapKVLayer(capacity, prompt_length, window, kernel, max_new))
            elif kind in ("sliding_attention", "chunked_attention"):
                sw = kw["sliding_window"] if sliding_keep is None else min(kw["sliding_window"], sliding_keep + 1)
                layers.append(DynamicSlidingWindowLayer(sliding_window=sw))  # holds sw - 1 keys between steps
            else:
                raise SinkholeError(f"SnapKVCache does not support '{kind}' layers")
        self.capacity, self.window, self.kernel = capacity, window, kernel
        super().__init__(layers=layers)

    def load_prefix(self, cache: Cache) -> SnapKVCache:
        """Start from a copy of a DynamicCache that has seen the prompt's first tokens (the dense prefill
        is the same computation, so a benchmark runs it once for dense and SnapKV). Sliding layers then
        keep their most recent `sliding_keep` keys: they read the prefix with their own window, as
        SnapKV prefills densely. Returns self."""

        for mine, theirs in zip(self.layers, cache.layers):
            if isinstance(mine, SnapKVLayer):
                if theirs.get_seq_length() >= mine.prompt_length:
                    raise SinkholeError("load_prefix: the cache already holds the whole prompt")
                mine.lazy_initialization(theirs.keys, theirs.values)
                mine.keys, mine.values = theirs.keys.clone(), theirs.values.clone()
                mine.cumulative_length = theirs.get_seq_length()
            elif theirs.is_initialized:  # a sliding layer: its most recent keys, up to this cache's window
                keep = mine.sliding_window - 1
                mine.lazy_initialization(theirs.keys, theirs.values)
                mine.keys, mine.values = theirs.keys[:, :, -keep:].clone(), theirs.values[:, :, -keep:].clone()
                mine.cumulative_length = theirs.cumulative_length
        return self

    def kv_bytes(self) -> int:
        """Bytes held for keys and values now (the sliding layers' tensors included)."""
        return cache_nbytes(self)


def snapkv_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """AttentionInterface function: transformers' SDPA, plus the window scores when a layer asks."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plan = kwargs.pop(PLAN_KEY, None)
    out = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if plan is not None:
        if kwargs.get("softcap") is not None:
            raise SinkholeError("SnapKVCache does not support attention logit softcapping")
        window, compress = plan
        compress(window_scores(query, key, scaling if scaling is not None else query.shape[-1] ** -0.5, window))
    return out


def snapkv_attention(model: torch.nn.Module):
    """Run `model` with the SnapKV attention function for the duration of the block."""
    from sinkhole.probe.hooks import registered_attention

    return registered_attention(model, ATTN_NAME, snapkv_attention_forward)
