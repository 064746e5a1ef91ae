"""Sink-aware KV caches for streaming generation (StreamingLLM), the head-aware cache (streaming vs
retrieval heads, from a profile's measured scores) and their long-text and recall evaluations.

Names are imported lazily: the CLI reads `sinkhole.cache.head_plan`'s defaults while it builds its
parser, which must not import torch (`sinkhole --help` stays instant)."""

_LAZY = {
    "HeadAwareSinkCache": "sinkhole.cache.head_aware",
    "head_aware_attention": "sinkhole.cache.head_aware",
    "SinkCache": "sinkhole.cache.sink_cache",
    "SinkCacheLayer": "sinkhole.cache.sink_cache",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sinkhole.cache' has no attribute {name!r}")
