"""Sink-aware KV caches for streaming generation (StreamingLLM) and their long-text evaluation."""

from sinkhole.cache.sink_cache import SinkCache, SinkCacheLayer

__all__ = ["SinkCache", "SinkCacheLayer"]
