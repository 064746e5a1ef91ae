"""The attention side of sinks + window in vLLM: which keys a query sees, at which positions.

`install(model, window, pinned, pin_blocks)` runs at the end of a model's `__init__` (see sinkhole.vllm.models) and
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
The paged cache is written and read here token by token (`write_rows` / `read_rows`: one gather
of a request's sink and window slots per layer and step), for the CPU backend's
(num_blocks, Hk, bs, 2 D) layout and FlashAttention's (2, num_blocks, bs, Hk, D). Only this module
writes and reads those layers' caches, so the CPU kernels' ISA-specific packing is never involved.
The slots and the sinks' rotation are computed once per step and shared by all layers (`Plan`).
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
    sink_pin_blocks: int = 0

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
            pin_blocks=self.sink_pin_blocks,
        )


def is_cpu_layout(kv_cache: torch.Tensor, head_size: int) -> bool:
    """CPU_ATTN's (num_blocks, Hk, bs, 2 D), keys then values in the last dim; else FlashAttention's
    (2, num_blocks, bs, Hk, D)."""
    if kv_cache.dim() == 4 and kv_cache.shape[-1] == 2 * head_size:
        return True
    if kv_cache.dim() == 5 and kv_cache.shape[0] == 2:
        return False
    raise SinkholeError(f"sinks + window: unsupported KV cache layout {tuple(kv_cache.shape)}")


def read_rows(kv_cache: torch.Tensor, plan: Plan, head_size: int) -> torch.Tensor:
    """Keys and values a request reads, head-major: (Hk, n + nw, 2 D), keys in [..., :D]: its n
    sinks, then window tokens lo .. seq_len - 1. On the CPU layout one `index_select` of rows
    (the plan's row numbers, the same for every layer) makes it, contiguous, in one copy."""
    if is_cpu_layout(kv_cache, head_size) and kv_cache.is_contiguous():  # (N, Hk, bs, 2D)
        rows = kv_cache.view(-1, kv_cache.shape[-1]).index_select(0, plan.cpu_rows(kv_cache.shape[1]))
        return rows.view(kv_cache.shape[1], -1, kv_cache.shape[-1])
    if is_cpu_layout(kv_cache, head_size):
        blocks = kv_cache.index_select(0, plan.win_blocks)  # (nb, Hk, bs, 2D)
        win = blocks.transpose(0, 1).reshape(blocks.shape[1], -1, blocks.shape[-1])
        sinks = kv_cache[plan.sink_blk, :, plan.sink_off].transpose(0, 1) if plan.sinks else None
    else:  # (2, N, bs, Hk, D)
        blocks = kv_cache.index_select(1, plan.win_blocks)  # (2, nb, bs, Hk, D)
        win = torch.cat((blocks[0], blocks[1]), dim=-1).flatten(0, 1).transpose(0, 1)
        if plan.sinks:
            sinks = torch.cat(
                (kv_cache[0, plan.sink_blk, plan.sink_off], kv_cache[1, plan.sink_blk, plan.sink_off]), -1
            )
            sinks = sinks.transpose(0, 1)
    win = win[:, plan.win_start : plan.win_start + plan.seq_len - plan.lo]
    return torch.cat((sinks, win), dim=1) if plan.sinks else win


def write_rows(kv_cache: torch.Tensor, blk: torch.Tensor, off: torch.Tensor, rows: torch.Tensor) -> None:
    head_size = rows.shape[-1] // 2
    if is_cpu_layout(kv_cache, head_size):
        kv_cache[blk, :, off] = rows.to(kv_cache.dtype)
    else:
        kv_cache[0, blk, off] = rows[..., :head_size].to(kv_cache.dtype)
        kv_cache[1, blk, off] = rows[..., head_size:].to(kv_cache.dtype)


class Plan:
    """What one request reads in one step, the same for every layer (computed once per step):
    slots of [its sinks, window tokens lo .. seq_len - 1], and for a single query the sinks'
    rotation (cos, sin) (n, R)."""

    def __init__(self, impl: SinkWindowImpl, table: torch.Tensor, seq_len: int, T: int, bs: int):
        W = impl.window
        self.T, self.first, self.seq_len = T, seq_len - T, seq_len
        self.lo = max(0, self.first - W + 1)  # window start of the first query: earlier blocks may be freed
        # Pinned tokens that have left the window of the last query are the candidate sinks.
        self.sinks = [p for p in impl.pinned if p < max(0, seq_len - W)]
        table = table.long()
        self.win_blocks = table[self.lo // bs : (seq_len - 1) // bs + 1]
        self.win_start = self.lo % bs
        sinks = torch.tensor(self.sinks, dtype=torch.long)
        self.sink_blk, self.sink_off = table[sinks // bs], sinks % bs
        self.bs, self._rows, self._mat = bs, None, None
        self.cos = self.sin = None
        if T == 1 and self.sinks:  # one query: the sinks sit just before its window
            n = len(self.sinks)
            ws = self.first - W + 1
            shift = torch.tensor([ws - n + i - p for i, p in enumerate(self.sinks)])
            self.cos, self.sin = rotation(shift, impl.inv_freq)

    def rotation_matrices(self, D: int, dtype: torch.dtype) -> torch.Tensor:
        """(n, D, D): key row @ M_i = sink i's key moved by its shift (NeoX pairing of the first R
        dims: out_j = k_j cos - k_{j+R/2} sin, out_{j+R/2} = k_{j+R/2} cos + k_j sin; dims >= R kept)."""
        if self._mat is None:
            n, R = self.cos.shape
            h = R // 2
            M = torch.eye(D, dtype=torch.float64).repeat(n, 1, 1)
            j = torch.arange(h)
            cos, sin = self.cos.double(), self.sin.double()
            M[:, j, j], M[:, j + h, j + h] = cos[:, :h], cos[:, h:]
            M[:, j + h, j], M[:, j, j + h] = -sin[:, :h], sin[:, h:]
            self._mat = M.to(dtype)
        return self._mat

    def cpu_rows(self, heads: int) -> torch.Tensor:
        """Row numbers (Hk * (n + nw),) in a (N * Hk * bs, 2D) view of the CPU cache: head-major,
        each head's sinks then window tokens."""
        if self._rows is None:
            bs = self.bs
            tokens = torch.arange(self.lo, self.seq_len)
            blk = torch.cat((self.sink_blk, self.win_blocks[(tokens - self.lo + self.win_start) // bs]))
            off = torch.cat((self.sink_off, tokens % bs))
            h = torch.arange(heads)[:, None]
            self._rows = ((blk[None, :] * heads + h) * bs + off[None, :]).reshape(-1)
        return self._rows


class SinkWindowImpl:
    """Wraps a backend's AttentionImpl: same cache tensor, sinkhole's write and attention."""

    def __init__(self, inner, window: int, pinned: tuple[int, ...], inv_freq: torch.Tensor):
        self.inner = inner
        self.window, self.pinned, self.inv_freq = int(window), tuple(sorted(pinned)), inv_freq.double().cpu()
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
        n = slot_mapping.shape[0]
        rows = torch.cat((key[:n], value[:n]), dim=-1)  # (n, Hk, 2D)
        if is_cpu_layout(kv_cache, self.head_size) and kv_cache.is_contiguous():
            if SHARED_SLOTS[0] is not slot_mapping:  # row numbers once per step, for every layer
                SHARED_SLOTS[:] = [slot_mapping, cpu_slot_rows(slot_mapping, kv_cache.shape[1], kv_cache.shape[2])]
            ok, idx = SHARED_SLOTS[1]
            rows = rows.reshape(-1, rows.shape[-1]) if ok is None else rows[ok].reshape(-1, rows.shape[-1])
            kv_cache.view(-1, kv_cache.shape[-1]).index_copy_(0, idx, rows.to(kv_cache.dtype))
            return
        bs = kv_cache.shape[2]  # both layouts
        slots = slot_mapping.long()
        ok = slots >= 0  # padded tokens carry slot -1
        if not bool(ok.all()):
            slots, rows = slots[ok], rows[ok]
        write_rows(kv_cache, slots // bs, slots % bs, rows)

    def plans(self, attn_metadata, bs: int) -> tuple[list[int], list[Plan | None]]:
        """Query offsets and one Plan per request, made by the step's first layer (all the layers
        of a KV-cache group get the same metadata object in a step, and the same settings)."""
        if SHARED_PLANS[0] is not attn_metadata:
            qsl = attn_metadata.query_start_loc.tolist()
            seq_lens = attn_metadata.seq_lens.tolist()
            plans = [
                Plan(self, attn_metadata.block_table[r], seq_lens[r], qsl[r + 1] - qsl[r], bs)
                if qsl[r + 1] > qsl[r]
                else None
                for r in range(len(seq_lens))
            ]
            SHARED_PLANS[:] = [attn_metadata, (qsl, plans)]
        return SHARED_PLANS[1]

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, **kwargs):
        if attn_metadata is None:  # profiling run
            return output
        qsl, plans = self.plans(attn_metadata, kv_cache.shape[2])
        for r, plan in enumerate(plans):
            if plan is not None:
                rows = read_rows(kv_cache, plan, self.head_size)
                q, out = query[qsl[r] : qsl[r + 1]], output[qsl[r] : qsl[r + 1]]
                if plan.T == 1:
                    self.decode(q, rows, plan, out)
                else:
                    out.copy_(self.prefill(q, rows, plan))
        return output

    def decode(self, q: torch.Tensor, rows: torch.Tensor, plan: Plan, out: torch.Tensor) -> None:
        """One query (1, Hq, D) over rows (Hk, n + nw, 2D), every row visible; result into out (1, Hq, D)."""
        D, n = self.head_size, len(plan.sinks)
        if n:  # the gathered copy's sink keys, rotated in place by the step's (n, D, D) matrices
            rows[:, :n, :D] = torch.einsum("hnd,nde->hne", rows[:, :n, :D], plan.rotation_matrices(D, rows.dtype))
        k, v = rows[..., :D], rows[..., D:]
        # Two batched matmuls over the KV heads (Hk, G, D) x (Hk, nk, D): reads k and v in place
        # (strided views of the gathered rows), where SDPA copies them first.
        qg = q.view(self.num_kv_heads, -1, D)
        scores = torch.baddbmm(qg.new_empty(()), qg, k.transpose(1, 2), beta=0.0, alpha=self.scale)
        probs = torch.softmax(scores, dim=-1)  # (Hk, G, nk)
        if out.dtype == rows.dtype and out.is_contiguous():
            torch.bmm(probs, v, out=out.view(self.num_kv_heads, -1, D))
        else:
            out.copy_(torch.bmm(probs, v).view(out.shape))

    def prefill(self, q: torch.Tensor, rows: torch.Tensor, plan: Plan) -> torch.Tensor:
        """T queries (T, Hq, D) at positions first .. seq_len - 1, in chunks of QUERY_CHUNK."""
        D, n = self.head_size, len(plan.sinks)
        rows = rows.transpose(0, 1).float()  # (n + nw, Hk, 2D)
        k_sink, v_sink = rows[:n, :, :D], rows[:n, :, D:]
        k_win, v_win = rows[n:, :, :D], rows[n:, :, D:]
        outs = []
        for c in range(0, plan.T, QUERY_CHUNK):
            qc = q[c : c + QUERY_CHUNK].float()
            pos = torch.arange(plan.first + c, plan.first + c + qc.shape[0])
            outs.append(self.attend(qc, pos, plan.lo, k_win, v_win, plan.sinks, k_sink, v_sink))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def attend(self, q, pos, lo, k_win, v_win, sinks, k_sink, v_sink) -> torch.Tensor:
        """q (t, Hq, D) at absolute positions pos (t,); window keys/values (nw, Hk, D) for positions
        lo ..; sink keys/values (n, Hk, D) at positions `sinks`. Each query sees its own window and
        the sinks that left it, placed just before it. Returns (t, Hq, D) float32."""
        t, W, Hk = q.shape[0], self.window, self.num_kv_heads
        G = self.num_heads // Hk
        qg = q.view(t, Hk, G, -1)
        ws = (pos - W + 1).clamp(min=0)  # each query's window start (t,)
        kpos = torch.arange(lo, lo + k_win.shape[0])
        scores = torch.einsum("thgd,khd->hgtk", qg, k_win) * self.scale  # (Hk, G, t, nw)
        visible = (kpos[None, :] >= ws[:, None]) & (kpos[None, :] <= pos[:, None])  # (t, nw)
        scores = scores.masked_fill(~visible, float("-inf"))
        values = v_win
        if sinks:
            sink_pos = torch.tensor(sinks)
            left = sink_pos[None, :] < ws[:, None]  # (t, n): sink i has left query t's window
            n_left = left.sum(dim=1, keepdim=True)  # sorted, so the first n_left sinks are the ones
            target = ws[:, None] - n_left + torch.arange(len(sinks))[None, :]  # just before the window
            shift = (target - sink_pos[None, :]).clamp(min=0)  # (t, n)
            cos, sin = rotation(shift.reshape(-1), self.inv_freq)
            cos, sin = cos.view(t, len(sinks), 1, -1), sin.view(t, len(sinks), 1, -1)
            k_rot = apply_rotation(k_sink[None].expand(t, -1, -1, -1), cos, sin)  # (t, n, Hk, D)
            s_sink = torch.einsum("thgd,tnhd->hgtn", qg, k_rot) * self.scale
            s_sink = s_sink.masked_fill(~left, float("-inf"))
            scores = torch.cat((s_sink, scores), dim=-1)
            values = torch.cat((v_sink, v_win))
        probs = torch.softmax(scores, dim=-1)
        return torch.einsum("hgtk,khd->thgd", probs, values).reshape(t, self.num_heads, -1)


def cpu_slot_rows(slot_mapping: torch.Tensor, heads: int, bs: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(mask of real tokens or None when all are, row numbers (n * Hk,)) of the new tokens' slots
    in a (N * Hk * bs, 2D) view of the CPU cache (token-major, then head)."""
    slots = slot_mapping.long()
    ok = slots >= 0  # padded tokens carry slot -1
    ok = None if bool(ok.all()) else ok
    if ok is not None:
        slots = slots[ok]
    h = torch.arange(heads)[None, :]
    return ok, (((slots // bs)[:, None] * heads + h) * bs + (slots % bs)[:, None]).reshape(-1)


SHARED_SLOTS: list = [None, None]  # the latest step's slot mapping and its row numbers
SHARED_PLANS: list = [None, None]  # the latest step's metadata object and its plans, shared by all layers


def rope_inv_freq(module: torch.nn.Module) -> torch.Tensor:
    """The rotary frequencies (R/2,) of the attention block holding a vLLM `rotary_emb`."""
    rope = getattr(module, "rotary_emb", None)
    if rope is None or not hasattr(rope, "_compute_inv_freq"):
        raise SinkholeError(
            f"sinks + window needs RoPE attention; {type(module).__name__} has no rotary embedding that sinkhole knows"
        )
    if not getattr(rope, "is_neox_style", True):
        raise SinkholeError(
            "sinks + window supports NeoX-style RoPE (Llama, Qwen, Mistral), not GPT-J's interleaved one"
        )
    return rope._compute_inv_freq(rope.base).float()


def install(model: torch.nn.Module, window: int, pinned: tuple[int, ...], pin_blocks: int = 0) -> int:
    """Turn each global decoder Attention layer under `model` into a sinks + window layer; the count."""
    count = 0
    for module in model.modules():
        attn = getattr(module, "attn", None)
        if not isinstance(attn, Attention) or isinstance(attn, SinkWindowAttention):
            continue
        if attn.attn_type != AttentionType.DECODER or getattr(attn, "sliding_window", None) is not None:
            continue  # local (sliding) layers keep vLLM's own window: they never saw far tokens
        attn.__class__ = SinkWindowAttention
        attn.sink_window, attn.sink_pinned, attn.sink_pin_blocks = int(window), tuple(pinned), int(pin_blocks)
        attn.impl = SinkWindowImpl(attn.impl, window, pinned, rope_inv_freq(module))
        count += 1
    if count == 0:
        raise SinkholeError(f"{type(model).__name__}: no global attention layer to put sinks + window on")
    return count
