"""Attention that measures itself: exact softmax attention that returns, besides its output, the
per-key column sums of the attention probabilities (and the learned sinks' share, gpt-oss).

- One pure function, `attention_with_stats`, is the contract; `sinkhole_attention` is the thin
  adapter registered with transformers' `AttentionInterface` under the name "sinkhole" (and
  `sdpa_mask` under `AttentionMaskInterface`, so masks arrive boolean, or None when plain causal
  suffices). Outside an active probe (no recorder set) the adapter defers to transformers' SDPA,
  so a model left on "sinkhole" attention behaves exactly as before.
- Two implementations give the same numbers (tests compare them case by case: causal and
  bidirectional, bool and float masks, left padding, sliding windows, softcap, learned sinks,
  GQA, Dv != D, float32/bfloat16/float16 inputs with float32 statistics); `choose_path` picks:
  - CPU -> `sinkhole.probe.exact_attention`: query blocks that skip the keys they cannot see, the
    softmax and column sum fused in C, row slices on several threads.
  - CUDA with Triton -> `sinkhole.probe.triton_attention`: a fused kernel gives the output and
    each row's log-sum-exp, then one Triton kernel sums exp(q.k * scale - lse[t]) over rows per
    key block without ever writing a score to memory.
  - Maps (`keep_probs`, small inputs only) always take the exact path.
- Why the split: blocks that suit a CPU's caches become thousands of tiny kernels on a GPU, and on
  a CPU recomputing QK^T (the fused design) costs more than the softmax it saves. The measurements
  are in docs/attention.md ("Why not the same design everywhere") and BENCHMARKS.md.
"""

from __future__ import annotations

import contextvars
import os
import warnings

import torch

from sinkhole.probe.exact_attention import (
    DEFAULT_BLOCK_BYTES,
    THREADED_MIN_ROWS,
    exact_attention_with_stats,
    grads_flow,
    threaded_exact_attention_with_stats,
)

ATTN_NAME = "sinkhole"

# The active recorder for the forward pass in flight (see sinkhole.probe.recorder); None = plain SDPA.
ACTIVE_RECORDER: contextvars.ContextVar = contextvars.ContextVar("sinkhole_recorder", default=None)


def sink_logits(kwargs: dict):
    """Learned per-head sink logits (Hq,): gpt-oss passes `s_aux`, others `sinks`; other shapes are refused
    rather than silently ignored (the statistics would be wrong)."""
    s = kwargs.get("s_aux")
    s = kwargs.get("sinks") if s is None else s
    if s is not None and s.dim() != 1:
        from sinkhole.errors import SinkholeError

        raise SinkholeError(
            f"learned attention sinks of shape {tuple(s.shape)} (not one logit per head) "
            "are not supported by the probe"
        )
    return s


PATHS = ("auto", "exact", "fused")
_WARNED: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        warnings.warn(msg, stacklevel=3)


def choose_path(query: torch.Tensor, keep_probs: bool = False) -> str:
    """ "fused" on CUDA when Triton is there and passed its self-check; "exact" otherwise.

    `SINKHOLE_ATTENTION=exact|fused` overrides (benchmarks, debugging). Maps (keep_probs) always
    take the exact path: they exist only for small inputs, where it is fast anyway.
    """
    forced = os.environ.get("SINKHOLE_ATTENTION", "auto")
    if keep_probs:
        return "exact"
    if forced in ("exact", "fused"):
        return forced
    if not query.is_cuda:
        return "exact"
    from sinkhole.probe import triton_attention

    return "fused" if triton_attention.available(str(query.device)) else "exact"


def attention_with_stats(
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
    path: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Attention output, column sums, maps and learned-sink mass, by the fastest exact path for the device.

    Arguments and returns as `exact_attention_with_stats` (the reference); `path` is "auto"
    (`choose_path`), "exact" or "fused" (`sinkhole.probe.triton_attention`, needs Triton; on the
    CPU only under TRITON_INTERPRET=1, for tests). Both paths give the same numbers up to float32
    rounding: tests compare them case by case.
    """
    if path not in PATHS:
        raise ValueError(f"unknown attention path {path!r}; expected one of {PATHS}")
    chosen = choose_path(query, keep_probs) if path == "auto" else path
    if chosen == "fused" and not keep_probs:
        from sinkhole.probe.triton_attention import fused_attention_with_stats

        try:
            out, colsum, sink_mass = fused_attention_with_stats(
                query,
                key,
                value,
                mask,
                scaling,
                softcap=softcap,
                sinks=sinks,
                query_valid=query_valid,
                causal=causal,
            )
            return out, colsum, None, sink_mass
        except Exception as exc:  # a kernel variant the self-check did not cover failed to build or run
            if path != "auto":
                raise
            _warn_once(
                f"sinkhole: fused attention statistics failed ({type(exc).__name__}: {exc}); "
                "using the exact blocked path (slower)"
            )
    kwargs = dict(softcap=softcap, sinks=sinks, query_valid=query_valid, block_bytes=block_bytes, causal=causal)
    threads = torch.get_num_threads()
    # Workers write slices of one output tensor; autograd's bookkeeping of in-place writes is not
    # made for concurrent threads, so with gradients flowing one call does the work.
    cpu, long = query.device.type == "cpu", query.shape[2] >= THREADED_MIN_ROWS
    if cpu and long and threads > 1 and not (keep_probs or grads_flow(query, key, value)):
        return threaded_exact_attention_with_stats(query, key, value, mask, scaling, threads, **kwargs)
    return exact_attention_with_stats(query, key, value, mask, scaling, keep_probs=keep_probs, **kwargs)


def sinkhole_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers AttentionInterface adapter; returns (output (B, T, Hq, Dv), None)."""
    recorder = ACTIVE_RECORDER.get()
    if recorder is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    layer = getattr(module, "layer_idx", None)
    return recorder.attention(
        layer,
        query,
        key,
        value,
        attention_mask,
        scaling,
        softcap=kwargs.get("softcap"),
        sinks=sink_logits(kwargs),
        causal=getattr(module, "is_causal", True),
        bias=kwargs.get("position_bias"),  # additive logits bias (relative positions, e.g. Inkling)
    ), None


def register() -> str:
    """Register "sinkhole" with transformers (idempotent) and return the name."""
    from sinkhole.probe.hooks import register_attention

    return register_attention(ATTN_NAME, sinkhole_attention)
