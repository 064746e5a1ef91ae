"""Sink-aware KV caches for streaming generation (StreamingLLM) and their long-text evaluation."""
