"""SinkCache: a bounded KV cache for streaming generation that keeps the attention sinks.

StreamingLLM (Xiao et al., ICLR 2024) keeps the first few tokens (the "sinks" most heads dump
attention on) plus a window of the most recent tokens, and numbers positions *within the cache*:
with sinks s_0..s_{S-1} and a window of w recent tokens, the query sits at cache position S+w-1,
window token j at its true distance from the query, and sink i at distance S+w-1-i.

Design decisions (transformers 5.x, no patching of model code):

- Built from transformers' cache layer classes: `SinkCache` is a `transformers.Cache` whose
  global-attention layers are `SinkCacheLayer` (a `CacheLayerMixin`), and whose local layers
  (Gemma-3's sliding layers, Mistral-style windows) are transformers' own
  `DynamicSlidingWindowLayer`: those layers never saw far tokens in training, so they get a plain
  window (their own, or the cache's size if smaller) and no sinks.
- Positions. transformers caches keys *after* RoPE, and `generate()` feeds absolute position ids
  (it counts them itself, so a cache cannot renumber them). RoPE attention scores depend only on
  the distance between query and key, so StreamingLLM's in-cache numbering is reproduced exactly
  by keeping the model's absolute positions and re-rotating only the *sink* keys: the window is
  contiguous and already sits at its true distances, and each sink is rotated to sit just before
  the window, i.e. at absolute position `window_start - S + i`. Only S keys per layer are ever
  rotated (never the window); the placement moves one position per step, so the rotations of the
  next 64 steps are computed in one batched pass and each step copies its slice. Sinks are kept
  with their original rotation and rotated from it afresh, so rounding errors never accumulate.
- Storage: a preallocated ring buffer per layer (see `SinkCacheLayer`); a decode step writes one
  slot and returns a view, where DynamicCache concatenates its whole cache.
- Numerical cost: each sink key goes through one extra rotation (cos/sin computed in float64,
  applied in float32), and, like any transformers model at that position, the model computes its
  own RoPE angles as float32 `position * inv_freq`, which loses ~position * 2^-24 rad. See
  docs/cache.md for the measured logit differences against full recomputation.
- Batches: any batch size whose rows share one length and have no padding (the cache keeps the
  same token positions for every row). Left-padded batches are not supported: the pinned slots
  would be the padding.
- A forward of q > 1 tokens on a full cache (a long prompt, say) attends densely over the cached
  keys plus the whole chunk with the sinks placed for the chunk's first token; the cache is
  trimmed back to S + w - 1 afterwards. Token-by-token decoding is exact StreamingLLM.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicSlidingWindowLayer, get_layer_types_and_kwargs

from sinkhole.errors import SinkholeError
from sinkhole.models.families import rotary_inv_freq

GLOBAL_TYPES = ("full_attention",)
ROTATION_BLOCK = 64  # decode steps whose sink rotations are computed in one batched pass
DEFAULT_WINDOW = (
    1020  # recent tokens a SinkCache keeps: with 4 sinks, 1024 slots (StreamingLLM's setting); SinkAwareLLM's too
)
LOCAL_TYPES = ("sliding_attention", "chunked_attention")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The RoPE pairing of transformers' Llama-family models: (x1, x2) -> (-x2, x1) over halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotation(shift: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (n, R) float32, of a move by `shift` (n,) positions at frequencies (R/2,).

    The angle is computed in float64, so a shift of thousands of positions costs one float32
    rounding of cos/sin rather than float32's ~shift * 2^-24 rad error in the angle itself."""
    angle = shift.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]  # (n, R/2)
    angle = torch.cat((angle, angle), dim=-1)
    return angle.cos().to(torch.float32), angle.sin().to(torch.float32)


def apply_rotation(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """keys (..., n, D) rotated by (cos, sin) (..., n, R), R <= D, in float32; dims past R untouched.

    Leading dims broadcast: keys (B, H, n, D)[None] with cos (K, 1, 1, n, R) gives K rotations."""
    rot = cos.shape[-1]
    k = keys[..., :rot].float()
    out = (k * cos + rotate_half(k) * sin).to(keys.dtype)
    if rot < keys.shape[-1]:
        rest = keys[..., rot:]
        out = torch.cat((out, rest.expand(*out.shape[:-1], rest.shape[-1])), dim=-1)
    return out


def rotate_keys(keys: torch.Tensor, shift: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Move post-RoPE keys by `shift` positions: R(p) k -> R(p + shift) k.

    keys: (B, H, n, D), already rotated by the model; shift: (n,) integer positions, one per key;
    inv_freq: (R/2,) the rotary frequencies of this layer (R <= D: partial rotary models rotate
    only the first R dims). RoPE's attention scaling (YaRN) is already inside the cached keys and
    is not applied again.
    """
    cos, sin = rotation(shift, inv_freq.to(keys.device))
    return apply_rotation(keys, cos.to(keys.device), sin.to(keys.device))


class BatchOpsMixin:
    """Beam search and batch expansion for a cache layer that can apply one function to every
    tensor it holds (`_map_batch(fn)`, batch on dim 0)."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda t: t[indices, ...])


class SinkCacheLayer(BatchOpsMixin, CacheLayerMixin):
    """One global-attention layer's cache: pinned sink tokens plus a window of recent tokens.

    Storage, preallocated at the first update (B batch, H kv heads, D head dim, W window, P pinned):
        buf_k, buf_v    (B, H, W + P, D)  slots [0, W): a ring, position p in slot p % W, original
                                          rotation; slots [W, W + n): the n sinks that left the
                                          window, re-rotated in place each step
        sink_k, sink_v  (B, H, P, D)      those sinks with their original rotation (positions in
                                          `sink_pos`), the source of each step's re-rotation
    A decode step writes one ring slot and the sinks' slots and returns a view of the buffer: no
    allocation, no copy of the window (DynamicCache concatenates its whole cache every step). The
    buffer is not in position order, which a single query does not mind (softmax is permutation
    invariant and every key is visible). A chunk of q > 1 tokens gets an ordered copy instead
    (sinks, window, chunk), so the model's causal mask lines up.
    Between steps it logically holds the n sinks + the W - 1 most recent tokens (`stored_length`);
    the ring's extra slot is the one the next token overwrites.
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, pinned: tuple[int, ...], window: int, inv_freq: torch.Tensor, shared: dict | None = None):
        super().__init__()
        # Every global layer moves its sinks by the same shifts at each step: layers that share a
        # SinkCache share the cos/sin too (keyed by step and frequencies), computed once per step.
        self.shared = shared if shared is not None else {}
        if window < 2:
            raise SinkholeError(f"window must be at least 2 (got {window})")
        self.pinned = frozenset(int(p) for p in pinned)
        self.window = int(window)
        self.inv_freq = inv_freq
        self.reset_state()

    def reset_state(self) -> None:
        self.buf_k = self.buf_v = self.sink_k = self.sink_v = None
        self._rot = None  # (first window_start, n sinks, rotated sink keys (K, B, H, n, D))
        self.sink_pos: list[int] = []
        self.cumulative_length = 0
        self.is_initialized = False

    @property
    def window_start(self) -> int:
        """First position of the recent tokens held between steps (the last W - 1)."""
        return max(0, self.cumulative_length - (self.window - 1))

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        b, h, _, d = key_states.shape
        W, P = self.window, len(self.pinned)
        self.buf_k = key_states.new_zeros((b, h, W + P, d))
        self.buf_v = value_states.new_zeros((b, h, W + P, value_states.shape[-1]))
        self.sink_k = key_states.new_zeros((b, h, P, d))
        self.sink_v = value_states.new_zeros((b, h, P, value_states.shape[-1]))
        self.inv_freq = self.inv_freq.to(self.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append q new tokens; return the keys/values the new tokens attend to."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        W, n = self.window, len(self.sink_pos)
        p0, q = self.cumulative_length, key_states.shape[-2]
        old_start = self.window_start
        if n:
            self.buf_k[:, :, W : W + n] = self.rotated_sinks(old_start)
        if q == 1:
            self.buf_k[:, :, p0 % W] = key_states[:, :, 0]
            self.buf_v[:, :, p0 % W] = value_states[:, :, 0]
            m = W + n if n else min(p0 + 1, W)
            full_k, full_v = self.buf_k[:, :, :m], self.buf_v[:, :, :m]
            recent = lambda p: p % W  # noqa: E731  where a recent position sits in the returned tensor
        else:
            order = torch.tensor([p % W for p in range(old_start, p0)], device=self.device, dtype=torch.long)
            full_k = torch.cat((self.buf_k[:, :, W : W + n], self.buf_k.index_select(2, order), key_states), dim=-2)
            full_v = torch.cat((self.buf_v[:, :, W : W + n], self.buf_v.index_select(2, order), value_states), dim=-2)
            new = torch.arange(max(p0, p0 + q - W), p0 + q, device=self.device)
            self.buf_k.index_copy_(2, new % W, key_states[:, :, new - p0])
            self.buf_v.index_copy_(2, new % W, value_states[:, :, new - p0])
            recent = lambda p: n + p - old_start  # noqa: E731
        self.cumulative_length += q
        # Pinned tokens that leave the window now become sinks (their keys carry their original rotation).
        for p in range(old_start, self.window_start):
            if p in self.pinned:
                i = len(self.sink_pos)
                self.sink_k[:, :, i] = full_k[:, :, recent(p)]
                self.sink_v[:, :, i] = full_v[:, :, recent(p)]
                self.buf_v[:, :, W + i] = self.sink_v[:, :, i]  # values are not rotated: placed once
                self.sink_pos.append(p)
        return full_k, full_v

    def rotated_sinks(self, window_start: int) -> torch.Tensor:
        """The sinks' keys placed just before a window starting at `window_start`: (B, H, n, D).

        The placement moves by one position per decode step, so the rotations of the next
        ROTATION_BLOCK steps are computed in one batched pass (cos/sin shared by all layers) and
        each step only copies its slice: a decode step costs one small copy for the sinks instead
        of a dozen elementwise kernels (what made SinkCache 0.67x DynamicCache on a GPU)."""
        n = len(self.sink_pos)
        block = self._rot
        if block is None or block[1] != n or not 0 <= window_start - block[0] < block[2].shape[0]:
            cos, sin = self.sink_rotation(window_start)  # (K, n, R)
            rot = apply_rotation(self.sink_k[:, :, :n][None], cos[:, None, None], sin[:, None, None])
            self._rot = block = (window_start, n, rot)  # rot: (K, B, H, n, D)
        return block[2][window_start - block[0]]

    def sink_rotation(self, window_start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin (K, S, R) placing sink i just before the window, at absolute position
        ws - S + i, for ws = window_start .. window_start + K - 1 (K = ROTATION_BLOCK)."""
        key = (window_start, tuple(self.sink_pos), self.inv_freq.data_ptr())
        if self.shared.get("key") != key:
            S = len(self.sink_pos)
            starts = torch.arange(window_start, window_start + ROTATION_BLOCK)[:, None]  # (K, 1)
            target = starts - S + torch.arange(S)[None, :]  # (K, S)
            cos, sin = rotation((target - torch.tensor(self.sink_pos)[None, :]).reshape(-1), self.inv_freq.cpu())
            shape = (ROTATION_BLOCK, S, cos.shape[-1])
            self.shared.clear()
            self.shared.update(key=key, value=(cos.reshape(shape).to(self.device), sin.reshape(shape).to(self.device)))
        return self.shared["value"]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """Cached keys map to the positions just before the query, so a causal mask shows them all."""
        stored = self.stored_length()
        return stored + query_length, self.cumulative_length - stored

    def stored_length(self) -> int:
        """Keys held between steps: the sinks that left the window + the W - 1 most recent tokens."""
        return len(self.sink_pos) + self.cumulative_length - self.window_start

    def get_seq_length(self) -> int:
        """Tokens seen so far (absolute), which is what the model numbers the next position from."""
        return self.cumulative_length

    def get_max_length(self) -> int:
        return len(self.pinned) + self.window

    def kv_bytes(self) -> int:
        if not self.is_initialized:
            return 0
        rot = self._rot[2].nbytes if self._rot is not None else 0  # the precomputed sink rotations
        return rot + sum(t.nbytes for t in (self.buf_k, self.buf_v, self.sink_k, self.sink_v))

    def reset(self) -> None:
        self.reset_state()

    def _map_batch(self, fn) -> None:
        if self.is_initialized:
            self.buf_k, self.buf_v = fn(self.buf_k), fn(self.buf_v)
            self.sink_k, self.sink_v = fn(self.sink_k), fn(self.sink_v)
            self._rot = None

    def crop(self, tokens_to_remove: int) -> None:
        raise SinkholeError(
            "SinkCache cannot be cropped (evicted tokens are gone): assisted decoding is not supported"
        )


class SinkCache(Cache):
    """StreamingLLM cache: `pinned` sink tokens + `window` recent tokens per global-attention layer.

        cache = SinkCache(n_sink=4, window=1020, model=model)   # pins positions 0..3
        model.generate(ids, past_key_values=cache, max_new_tokens=20_000)

    Each global layer attends to at most n_sink + window keys (the new token included) and holds
    n_sink + window - 1 between steps. `model` is needed for its rotary frequencies: transformers
    5.x no longer passes cos/sin to `Cache.update`. `sink_positions` overrides n_sink with explicit
    absolute positions to pin (a profile's sinks, say).
    """

    def __init__(
        self,
        n_sink: int = 4,
        window: int = DEFAULT_WINDOW,
        *,
        model: torch.nn.Module | None = None,
        sink_positions: list[int] | None = None,
    ):
        from sinkhole.validate import integer

        if not isinstance(model, torch.nn.Module):
            raise SinkholeError(
                "SinkCache needs the loaded model object (for its rotary frequencies): "
                f"SinkCache(..., model=lm.model), not {type(model).__name__} {model!r:.40}"
            )
        n_sink = integer(n_sink, "n_sink", lo=0, example=4)
        window = integer(window, "window", lo=2, example=DEFAULT_WINDOW)
        if sink_positions is not None:
            if isinstance(sink_positions, (str, bytes)) or not hasattr(sink_positions, "__iter__"):
                raise SinkholeError(
                    f"sink_positions must be a list of non-negative integers, not {sink_positions!r:.40}"
                )
            sink_positions = [integer(p, "a sink position", lo=0) for p in sink_positions]
        pinned = tuple(sorted(set(sink_positions))) if sink_positions is not None else tuple(range(n_sink))
        self.pinned, self.window = pinned, int(window)
        config = model.config.get_text_config(decoder=True)
        layer_types, layer_kwargs = get_layer_types_and_kwargs(config)
        capacity = len(pinned) + self.window
        layers, shared = [], {}
        for kind, kw in zip(layer_types, layer_kwargs):
            if kind in GLOBAL_TYPES:
                layers.append(SinkCacheLayer(pinned, self.window, rotary_inv_freq(model, kind), shared))
            elif kind in LOCAL_TYPES:
                layers.append(DynamicSlidingWindowLayer(sliding_window=min(kw["sliding_window"], capacity)))
            else:
                raise SinkholeError(f"SinkCache does not support '{kind}' layers")
        super().__init__(layers=layers)

    @classmethod
    def from_profile(cls, profile, window: int = DEFAULT_WINDOW, *, model: torch.nn.Module) -> SinkCache:
        """Pin the positions a `SinkProfile` found to sink (its `pinned_slots` first sink positions).

        When the profile asks for more slots than it lists positions, the earliest unlisted
        positions fill the rest (StreamingLLM's default is the first tokens). `model`: the module,
        or the LoadedModel (then the profile's weights id is compared too, as the CLI does).
        """
        from sinkhole.validate import profile_for, torch_module

        model, loaded = torch_module(model, "SinkCache.from_profile")
        profile = profile_for(profile, model, loaded)  # well formed, and made for this model
        return cls(window=window, model=model, sink_positions=profile_positions(profile))

    @property
    def n_sink(self) -> int:
        return len(self.pinned)


MAX_PINNED = 65536  # more pinned slots than this is no profile, and would take memory for nothing


def profile_positions(profile) -> list[int]:
    """The absolute positions a profile pins: `pinned_slots` of them, its sink positions first."""
    from sinkhole.validate import integer

    slots = integer(profile.pinned_slots, "the profile's pinned_slots", lo=0, hi=MAX_PINNED)
    chosen = set(sorted(set(int(p) for p in profile.sink_positions))[:slots])
    p = 0
    while len(chosen) < slots:  # a set: linear in slots, not quadratic
        chosen.add(p)
        p += 1
    return sorted(chosen)


def cache_nbytes(cache: Cache) -> int:
    """Bytes held by any transformers Cache's tensors (a view counts its whole base storage once)."""
    seen, total = set(), 0
    for layer in cache.layers:
        if hasattr(layer, "kv_bytes"):  # sinkhole's layers know their preallocated buffers
            total += layer.kv_bytes()
            continue
        for name in ("keys", "values", "sink_keys", "sink_values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
    return total
