"""The attention side of sinks + window in vLLM: which keys a query sees, at which positions.

`install(model, settings)` runs at the end of a model's `__init__` (see sinkhole.vllm.models) and
turns every global decoder `Attention` layer into a sinks + window layer:

- the layer reports `SinkWindowSpec` (sinkhole.vllm.spec), so the scheduler frees the blocks
  between the sink blocks and the window while the request runs;
- its backend implementation is wrapped by `SinkWindowImpl`, which writes new keys/values into the
  paged cache itself and attends, per request, over exactly StreamingLLM's keys: the pinned tokens
  that left the window plus the last `window` tokens (the query included).

Positions within the cache (StreamingLLM, as in sinkhole.cache.SinkCache): the paged cache holds
keys rotated at their absolute positions and is never rewritten. The window keys already sit at
their true distance from the query; each sink key is read from its (never freed) block and rotated
by `target - position` on the fly, `target = window_start - n + i` for sink i of the n that left
the window, i.e. just before the window. Scores are then one softmax over [sinks, window].

Shapes: T new tokens in a step, Hq query heads, Hk KV heads, G = Hq / Hk, D head size, bs block size.
The paged cache is read through `token_major(kv_cache)`: keys and values as (num_blocks, bs, Hk, D)
views, for the CPU backend's (num_blocks, Hk, bs, 2 D) layout and FlashAttention's
(2, num_blocks, bs, Hk, D). Only this module writes and reads those layers' caches, so the CPU
kernels' ISA-specific packing is never involved.
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.attention import Attention
from vllm.v1.attention.backend import AttentionType
from vllm.v1.kv_cache_interface import get_kv_quant_mode

from sinkhole.cache.sink_cache import apply_rotation, rotation
from sinkhole.errors import SinkholeError
from sinkhole.vllm.spec import SinkWindowSpec

QUERY_CHUNK = 256  # prefill queries scored at once: bounds the (Hq, chunk, keys) score tensor


class SinkWindowAttention(Attention):
    """A vLLM `Attention` layer whose KV cache spec is `SinkWindowSpec` (set by `install`)."""

    sink_window: int
    sink_pinned: tuple[int, ...]

    def get_kv_cache_spec(self, vllm_config):
        return SinkWindowSpec(
            block_size=vllm_config.cache_config.block_size,
            num_kv_heads=self.num_kv_heads,
            head_size=self.head_size,
            head_size_v=self.head_size_v,
            dtype=self.kv_cache_torch_dtype,
            kv_quant_mode=get_kv_quant_mode(self.kv_cache_dtype),
            sliding_window=self.sink_window,
            pinned=self.sink_pinned,
        )


def token_major(kv_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of a paged cache as (num_blocks, bs, Hk, D) views."""
    if kv_cache.dim() == 4 and kv_cache.shape[-1] == 2 * head_size:  # CPU_ATTN: (N, Hk, bs, 2D)
        return kv_cache[..., :head_size].transpose(1, 2), kv_cache[..., head_size:].transpose(1, 2)
    if kv_cache.dim() == 5 and kv_cache.shape[0] == 2:  # FlashAttention: (2, N, bs, Hk, D)
        return kv_cache[0], kv_cache[1]
    raise SinkholeError(f"sinks + window: unsupported KV cache layout {tuple(kv_cache.shape)}")


class SinkWindowImpl:
    """Wraps a backend's AttentionImpl: same cache tensor, sinkhole's write and attention."""

    def __init__(self, inner, window: int, pinned: tuple[int, ...], inv_freq: torch.Tensor):
        self.inner = inner
        self.window, self.pinned, self.inv_freq = int(window), tuple(sorted(pinned)), inv_freq.double().cpu()
        self.pinned_t = torch.tensor(self.pinned, dtype=torch.long)
        self.num_heads, self.num_kv_heads, self.head_size = inner.num_heads, inner.num_kv_heads, inner.head_size
        self.scale = float(inner.scale)
        self.kv_sharing_target_layer_name = getattr(inner, "kv_sharing_target_layer_name", None)

    def __getattr__(self, name):  # backend attributes the runner reads (sliding_window, attn_type, ...)
        return getattr(self.inner, name)

    def process_weights_after_loading(self, act_dtype):
        fn = getattr(self.inner, "process_weights_after_loading", None)
        if fn is not None:
            fn(act_dtype)

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        k_cache, v_cache = token_major(kv_cache, self.head_size)
        bs = k_cache.shape[1]
        n = slot_mapping.shape[0]
        slots = slot_mapping.long()
        ok = slots >= 0  # padded tokens carry slot -1
        blk, off = slots[ok] // bs, slots[ok] % bs
        k_cache[blk, off] = key[:n][ok].to(k_cache.dtype)
        v_cache[blk, off] = value[:n][ok].to(v_cache.dtype)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, **kwargs):
        if attn_metadata is None:  # profiling run
            return output
        k_cache, v_cache = token_major(kv_cache, self.head_size)
        qsl = attn_metadata.query_start_loc.tolist()
        seq_lens = attn_metadata.seq_lens.tolist()
        for r in range(len(seq_lens)):
            a, b = qsl[r], qsl[r + 1]
            if b > a:
                out = self.request(query[a:b], k_cache, v_cache, attn_metadata.block_table[r], seq_lens[r])
                output[a:b] = out.to(output.dtype)
        return output

    def gather(self, cache: torch.Tensor, table: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Tokens [lo, hi) of one request: (hi - lo, Hk, D)."""
        bs = cache.shape[1]
        blocks = cache.index_select(0, table[lo // bs : (hi - 1) // bs + 1].long())
        flat = blocks.reshape(-1, *cache.shape[2:])
        start = lo - (lo // bs) * bs
        return flat[start : start + hi - lo]

    def request(self, q, k_cache, v_cache, table, seq_len: int) -> torch.Tensor:
        """Attention of one request's T new queries (T, Hq, D), positions seq_len - T .. seq_len - 1."""
        T, W = q.shape[0], self.window
        first = seq_len - T
        lo = max(0, first - W + 1)  # window start of the first query: earlier blocks may be freed
        k_win = self.gather(k_cache, table, lo, seq_len).float()
        v_win = self.gather(v_cache, table, lo, seq_len).float()
        # Pinned tokens that have left the window of the last query are the candidate sinks.
        ws_last = max(0, seq_len - W)
        sinks = [p for p in self.pinned if p < ws_last]
        if sinks:
            bs = k_cache.shape[1]
            idx = torch.tensor(sinks, dtype=torch.long)
            slot_blocks = table.long()[idx // bs]
            k_sink = k_cache[slot_blocks, idx % bs].float()  # (n, Hk, D), rotated at the sink positions
            v_sink = v_cache[slot_blocks, idx % bs].float()
        outs = []
        for c in range(0, T, QUERY_CHUNK):
            qc = q[c : c + QUERY_CHUNK].float()
            pos = torch.arange(first + c, first + c + qc.shape[0])
            outs.append(self.attend(qc, pos, lo, k_win, v_win, sinks, k_sink if sinks else None, v_sink if sinks else None))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def attend(self, q, pos, lo, k_win, v_win, sinks, k_sink, v_sink) -> torch.Tensor:
        """q (t, Hq, D) at absolute positions pos (t,); window keys/values (nw, Hk, D) for positions
        lo ..; sink keys/values (n, Hk, D) at positions `sinks`. Returns (t, Hq, D) float32."""
        t, W, Hk = q.shape[0], self.window, self.num_kv_heads
        G = self.num_heads // Hk
        qg = q.view(t, Hk, G, -1)
        ws = (pos - W + 1).clamp(min=0)  # each query's window start (t,)
        kpos = torch.arange(lo, lo + k_win.shape[0])
        scores = torch.einsum("thgd,khd->hgtk", qg, k_win) * self.scale  # (Hk, G, t, nw)
        visible = (kpos[None, :] >= ws[:, None]) & (kpos[None, :] <= pos[:, None])  # (t, nw)
        scores = scores.masked_fill(~visible, float("-inf"))
        if k_sink is not None:
            sink_pos = torch.tensor(sinks)
            left = sink_pos[None, :] < ws[:, None]  # (t, n): sink i has left query t's window
            n_left = left.sum(dim=1, keepdim=True)  # the first n_left sinks (sorted) are sinks
            target = ws[:, None] - n_left + torch.arange(len(sinks))[None, :]  # just before the window
            shift = (target - sink_pos[None, :]).clamp(min=0)  # (t, n)
            cos, sin = rotation(shift.reshape(-1), self.inv_freq)
            cos, sin = cos.view(t, len(sinks), 1, -1), sin.view(t, len(sinks), 1, -1)
            k_rot = apply_rotation(k_sink[None].expand(t, -1, -1, -1), cos, sin)  # (t, n, Hk, D)
            s_sink = torch.einsum("thgd,tnhd->hgtn", qg, k_rot) * self.scale
            s_sink = s_sink.masked_fill(~left, float("-inf"))
            scores = torch.cat((s_sink, scores), dim=-1)
            values = torch.cat((v_sink, v_win))
        else:
            values = v_win
        probs = torch.softmax(scores, dim=-1)
        return torch.einsum("hgtk,khd->thgd", probs, values).reshape(t, self.num_heads, -1)


def rope_inv_freq(module: torch.nn.Module) -> torch.Tensor:
    """The rotary frequencies (R/2,) of the attention block holding a vLLM `rotary_emb`."""
    rope = getattr(module, "rotary_emb", None)
    if rope is None or not hasattr(rope, "_compute_inv_freq"):
        raise SinkholeError(
            f"sinks + window needs RoPE attention; {type(module).__name__} has no rotary embedding that sinkhole knows"
        )
    if not getattr(rope, "is_neox_style", True):
        raise SinkholeError("sinks + window supports NeoX-style RoPE (Llama, Qwen, Mistral), not GPT-J's interleaved one")
    return rope._compute_inv_freq(rope.base).float()


def install(model: torch.nn.Module, window: int, pinned: tuple[int, ...]) -> int:
    """Turn each global decoder Attention layer under `model` into a sinks + window layer; the count."""
    count = 0
    for module in model.modules():
        attn = getattr(module, "attn", None)
        if not isinstance(attn, Attention) or isinstance(attn, SinkWindowAttention):
            continue
        if attn.attn_type != AttentionType.DECODER or getattr(attn, "sliding_window", None) is not None:
            continue  # local (sliding) layers keep vLLM's own window: they never saw far tokens
        attn.__class__ = SinkWindowAttention
        attn.sink_window, attn.sink_pinned = int(window), tuple(pinned)
        attn.impl = SinkWindowImpl(attn.impl, window, pinned, rope_inv_freq(module))
        count += 1
    if count == 0:
        raise SinkholeError(f"{type(model).__name__}: no global attention layer to put sinks + window on")
    return count
