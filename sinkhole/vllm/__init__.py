"""Sinks + window (StreamingLLM) inside vLLM: `SinkAwareLLM`, a bounded KV cache per request.

Needs vLLM 0.32 (`make vllm-setup` makes .venv-vllm with the CPU build). Pieces:
settings (what to pin, checked before vLLM starts), spec (the KV-cache spec and the manager that
frees blocks), attention (which keys a query sees, at which positions), models (the registered
Sinkhole* architectures), plugin (vLLM's entry point), llm (the user-facing class).
"""

from sinkhole.vllm.llm import SinkAwareLLM, kv_blocks_in_use, pinned_sink_blocks, sink_engine_kwargs

__all__ = ["SinkAwareLLM", "kv_blocks_in_use", "pinned_sink_blocks", "sink_engine_kwargs"]
