"""The exact attention-statistics path (the reference, and the CPU's path): softmax attention in
query blocks sized by a memory budget, each block looking only at the keys it can see (causal
skip), with the softmax and the per-key column sum of the probabilities fused in C where a
compiler exists (`sinkhole.probe.cpu_kernel`; torch ops otherwise, same numbers).

GQA keys are never repeated (queries are viewed as [B, Hkv, G, T, D]); no [heads, T, T] tensor
exists. With several torch threads, the query rows are cut into slices of equal causal work, one
per Python thread running single-threaded ops (`threaded_exact_attention_with_stats`). Why this
design on a CPU and not the fused one of `sinkhole.probe.triton_attention`: docs/attention.md
("Why not the same design everywhere", with the measurements).
"""

from __future__ import annotations

import math
import threading

import torch

from sinkhole.probe import cpu_kernel

# Scores of one query block. Measured on a 2-core CPU: blocks that stay cache-sized (a few MB) run
# the memory-bound softmax/sum passes ~1.8x faster than 64 MB blocks, but GEMMs with fewer than
# ~64 query rows are slow; so aim for 8 MB and allow up to 8x that to reach MIN_BLOCK_ROWS.
DEFAULT_BLOCK_BYTES = 8 << 20
MIN_BLOCK_ROWS = 64


def exact_attention_with_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    query_valid: torch.Tensor | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    keep_probs: bool = False,
    causal: bool = True,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Exact attention plus the column sums of its probabilities, in query blocks (the reference path).

    Args:
        query: (B, Hq, Tq, D), post-RoPE.  key: (B, Hkv, Tk, D), post-RoPE.  value: (B, Hkv, Tk, Dv).
            Hq is a multiple of Hkv (GQA); the last Tq keys are the queries' own positions.
        mask: None (plain causal), bool (B|1, 1|Hq, Tq, Tk) with True = may attend, or an additive
            float mask of that shape.
        scaling: multiplier of q.k (usually D**-0.5).
        softcap: if set, logits become softcap * tanh(logits / softcap) (Gemma-2).
        sinks: (Hq,) learned per-head sink logits (gpt-oss); they take probability mass but no value.
        query_valid: (B, Tq) bool; rows that are padding contribute nothing to the column sums.
        keep_probs: also return the full probabilities (B, Hq, Tq, Tk) in float16 (small inputs only).
        causal: the model never attends to later keys (whatever the mask says), so each query block
            skips the keys past its last row. Only a bidirectional model would set False.
        out: (B, Tq, Hq, Dv) to write the output into (the threaded path's row slices of one tensor);
            by default a new tensor.

    Returns:
        out: (B, Tq, Hq, Dv) in query's dtype, the layout transformers' attention functions return.
        colsum: (B, Hq, Tk) float32, sum over valid query rows t of A[t, k].
        probs: (B, Hq, Tq, Tk) float16 when keep_probs, else None.
        sink_mass: (B, Hq) float32, sum over valid query rows of the probability the learned sink
            takes (None when sinks is None); fully masked rows take none.
    """
    B, Hq, Tq, D = query.shape
    Hkv, Tk, Dv = key.shape[1], key.shape[2], value.shape[-1]
    G = Hq // Hkv
    offset = Tk - Tq  # absolute position of query row 0 among the keys
    q = query.reshape(B, Hkv, G, Tq, D)
    k_t = key.transpose(-1, -2)  # (B, Hkv, D, Tk)
    if out is None:
        out = torch.empty(B, Tq, Hq, Dv, dtype=query.dtype, device=query.device)
    colsum = torch.zeros(B, Hkv, G, Tk, dtype=torch.float32, device=query.device)
    probs_all = torch.zeros(B, Hq, Tq, Tk, dtype=torch.float16, device=query.device) if keep_probs else None
    row_bytes = max(1, B * Hq * Tk * 4)
    block = max(block_bytes // row_bytes, min(MIN_BLOCK_ROWS, 8 * block_bytes // row_bytes), 1)
    block = min(Tq, block)
    # The fused softmax + column-sum step (C, in place) where it is built; torch ops otherwise.
    # It writes through raw pointers, which autograd would not see: not when gradients flow.
    fused = cpu_kernel.kernel() if query.device.type == "cpu" and not grads_flow(query, key, value) else None
    # The last block sees every key; the kernel's softmax is in place, torch's needs a second buffer.
    score_buf, prob_buf = scratch(B * Hq * block * Tk, query.device, 1 if fused else 2)
    sink_mass, sinks32 = None, None
    if sinks is not None:  # the kernel sums in float64 (MPS has no float64; only the CPU runs the kernel)
        sink_mass = torch.zeros(B, Hkv, G, dtype=torch.float64 if fused else torch.float32, device=query.device)
        sinks32 = sinks.float().contiguous()
    no_dead_rows = torch.zeros(1, 1, 1, 1, 1, dtype=torch.bool, device=query.device)
    for q0 in range(0, Tq, block):
        q1 = min(Tq, q0 + block)
        tb = q1 - q0
        # In a causal model, keys past the block's last query are invisible: skip them.
        kend = offset + q1 if (causal or mask is None) else Tk
        # The G query heads sharing a KV head are stacked along rows: one plain batched GEMM per
        # KV head, with no broadcast copy of the keys.
        # Scaling the (small) query block instead of the (large) scores saves a pass over memory.
        qb = (q[:, :, :, q0:q1].float() * scaling).reshape(B, Hkv, G * tb, D)  # one copy: mul makes it contiguous
        n = B * Hkv * G * tb * kend
        into = {} if score_buf is None else {"out": score_buf[:n].view(B, Hkv, G * tb, kend)}
        scores = torch.matmul(qb, k_t[..., :kend].float(), **into).view(B, Hkv, G, tb, kend)
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        # Plain causal: the softmax step knows each row's last key, and every row sees its own.
        causal_base, dead = offset + q0, no_dead_rows
        if mask is not None:
            m = mask[..., q0:q1, :kend]
            m = m.reshape(m.shape[0], -1, 1, tb, kend) if m.shape[1] == 1 else m.reshape(m.shape[0], Hkv, G, tb, kend)
            visible = m if m.dtype == torch.bool else ~torch.isneginf(m)
            if m.dtype == torch.bool:
                scores.masked_fill_(~m, float("-inf"))
            else:
                scores.add_(m.float())
            # Fully masked rows (left padding), told from the mask, which has no head axis: cheap.
            causal_base, dead = None, ~visible.any(dim=-1, keepdim=True)
        valid = None if query_valid is None else query_valid[:, q0:q1].float().contiguous()
        if fused is not None:
            cpu_kernel.softmax_colsum(scores, colsum, causal_base, valid, sinks32, sink_mass, fn=fused)
            p = scores
        else:
            p = cpu_kernel.torch_softmax_colsum(scores, colsum, causal_base, valid, sinks, sink_mass, dead, prob_buf)
        pv = torch.matmul(p.reshape(B, Hkv, G * tb, kend).to(value.dtype), value[:, :, :kend])
        # Straight into the returned layout: no (B, Hq, Tq, Dv) copy to transpose at the end.
        out[:, q0:q1].view(B, tb, Hkv, G, Dv).copy_(pv.view(B, Hkv, G, tb, Dv).permute(0, 3, 1, 2, 4))
        if keep_probs:
            if valid is not None:  # padding rows show no attention
                p = p * valid[:, None, None, :, None]
            probs_all[:, :, q0:q1, :kend] = p.reshape(B, Hq, tb, kend).to(torch.float16)
    sink_mass = sink_mass.reshape(B, Hq).float() if sink_mass is not None else None
    return out, colsum.reshape(B, Hq, Tk), probs_all, sink_mass


def grads_flow(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


_SCRATCH: dict = {}  # thread id -> (scores[, probabilities]) float32 buffers, CPU only
_SCRATCH_LOCK = threading.Lock()


def scratch(n: int, device: torch.device, count: int = 2) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """`count` (1 or 2) float32 buffers of at least n elements for the query blocks' scores and
    probabilities, padded with None to a pair.

    Why: allocated afresh per block (sizes growing with the block's keys), the freed blocks stayed
    scattered in glibc's heap and raised the peak RSS (docs/attention.md, "CPU memory"). On the CPU
    each thread keeps its buffers across blocks, layers and calls until `release_scratch()`
    (`recording` calls it when its forward ends). None, None (allocate per block) on CUDA, whose
    caching allocator already reuses blocks, and under autograd."""
    if device.type != "cpu" or torch.is_grad_enabled():  # autograd records no `out=` op
        return None, None
    tid = (threading.get_ident(), torch.is_inference_mode_enabled())  # inference tensors stay in inference mode
    bufs = _SCRATCH.get(tid)
    if bufs is None or len(bufs) < count or bufs[0].numel() < n:
        with _SCRATCH_LOCK:
            _SCRATCH.pop(tid, None)  # the smaller buffers go before the larger ones are allocated
            bufs = _SCRATCH[tid] = tuple(torch.empty(n) for _ in range(count))
    return bufs[0], bufs[1] if count > 1 else None


def release_scratch() -> None:
    """Free every thread's scratch buffers (after a forward: nothing stays allocated between runs)."""
    with _SCRATCH_LOCK:
        _SCRATCH.clear()


THREADED_MIN_ROWS = 512  # shorter inputs are a few blocks: not worth handing to threads
_POOL: dict = {}


def _single_threaded() -> None:
    torch.set_num_threads(1)  # in a worker: its own ops run on it alone


def threaded_exact_attention_with_stats(query, key, value, mask, scaling, threads: int, **kwargs):
    """The exact path on `threads` CPU cores: one slice of query rows per Python thread, each
    running single-threaded torch ops (which release the GIL), partial column sums added in order.

    Why: the blocked loop issues ~8 small ops per query block, and each intra-op parallel region
    ends in a barrier; Python threads on row slices are several times faster, with the same numbers
    (docs/attention.md, "CPU threads").
    Rows are split so that each slice does the same causal work (row t sees t keys: bounds at
    T * sqrt(j / n)); torch's thread count is restored on the way out.
    """
    from concurrent.futures import ThreadPoolExecutor

    B, Hq, Tq, _ = query.shape
    Tk = key.shape[2]
    offset = Tk - Tq
    is_causal = kwargs.get("causal", True) or mask is None
    if is_causal:
        bounds = [0] + [round(Tq * math.sqrt((j + 1) / threads)) for j in range(threads)]
    else:
        bounds = [round(Tq * j / threads) for j in range(threads + 1)]
    valid = kwargs.pop("query_valid", None)
    # Grad and inference mode are per thread: a worker starts with grad on, which would keep it off
    # the scratch buffers (and out of inference mode); it runs in the caller's modes instead.
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    out = torch.empty(B, Tq, Hq, value.shape[-1], dtype=query.dtype, device=query.device)

    def work(j: int):
        _single_threaded()
        q0, q1 = bounds[j], bounds[j + 1]
        kend = offset + q1 if is_causal else Tk
        m = mask[..., q0:q1, :kend] if mask is not None else None
        v = valid[:, q0:q1] if valid is not None else None
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            part = exact_attention_with_stats(
                query[:, :, q0:q1],
                key[:, :, :kend],
                value[:, :, :kend],
                m,
                scaling,
                query_valid=v,
                out=out[:, q0:q1],
                **kwargs,
            )
        return part, kend

    pool = _POOL.get(threads)
    if pool is None:
        pool = _POOL[threads] = ThreadPoolExecutor(threads, thread_name_prefix="sinkhole-attn")
    try:
        parts = list(pool.map(work, [j for j in range(threads) if bounds[j + 1] > bounds[j]]))
    finally:
        torch.set_num_threads(threads)  # the workers' setting leaks into the process-wide count
    colsum = torch.zeros(B, Hq, Tk, dtype=torch.float32, device=query.device)
    for (_, c, _, _), kend in parts:
        colsum[..., :kend] += c
    sink_mass = None
    if kwargs.get("sinks") is not None:
        sink_mass = sum(p[3] for p, _ in parts)
    return out, colsum, None, sink_mass
