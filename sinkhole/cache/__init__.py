"""Sink-aware KV caches for streaming generation (StreamingLLM), the head-aware cache (streaming vs
retrieval heads, from a profile's measured scores) and their long-text and recall evaluations."""

from sinkhole.cache.head_aware import HeadAwareSinkCache, head_aware_attention
from sinkhole.cache.sink_cache import SinkCache, SinkCacheLayer

__all__ = ["HeadAwareSinkCache", "SinkCache", "SinkCacheLayer", "head_aware_attention"]
