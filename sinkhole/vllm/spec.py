"""The KV-cache side of sinks + window in vLLM: a cache spec and the manager that frees blocks.

`SinkWindowSpec` is vLLM's `SlidingWindowSpec` plus the token positions to pin. Its manager,
`SinkWindowManager`, frees what `SlidingWindowManager` frees (blocks whose tokens all left the
window) except the blocks holding pinned positions, so a request holds at most
`blocks(pinned) + ceil((window - 1 + in-flight tokens) / block_size) + 1` blocks however long it
runs. Registered through vLLM's own extension point (`KVCacheSpecRegistry.register`), as its own
uniform base type so it is never grouped with plain sliding-window layers (Gemma-3's local layers
keep their own spec and manager).

Importing this module registers the spec: vLLM unpickles the spec in every process that builds a
manager, which imports this module first.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm.utils.math_utils import cdiv
from vllm.v1.core.single_type_kv_cache_manager import SlidingWindowManager
from vllm.v1.kv_cache_interface import SlidingWindowSpec
from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry


@dataclass(frozen=True, kw_only=True)
class SinkWindowSpec(SlidingWindowSpec):
    """Sliding window of `sliding_window` tokens (the query included) plus pinned token positions."""

    pinned: tuple[int, ...] = ()

    @property
    def pinned_blocks(self) -> frozenset[int]:
        return frozenset(p // self.block_size for p in self.pinned)

    def max_admission_blocks_per_request(self, max_in_flight_tokens: int, max_model_len: int) -> int:
        window = super().max_admission_blocks_per_request(max_in_flight_tokens, max_model_len)
        return min(window + len(self.pinned_blocks), cdiv(max_model_len, self.block_size) + 1)

    def is_uniform_with_collection(self, kv_cache_specs: dict) -> bool:
        return all(
            isinstance(s, SinkWindowSpec) and s.sliding_window == self.sliding_window and s.pinned == self.pinned
            for s in kv_cache_specs.values()
        )


class SinkWindowManager(SlidingWindowManager):
    """SlidingWindowManager that never frees the blocks holding pinned positions.

    Prefix caching is refused upstream (SinkAwareLLM): the sliding-window hit search accepts hits
    whose leading blocks are gone, which would include the sink blocks."""

    def __init__(self, kv_cache_spec: SinkWindowSpec, **kwargs) -> None:
        super().__init__(kv_cache_spec, **kwargs)
        self.pinned_blocks = kv_cache_spec.pinned_blocks

    def remove_skipped_blocks(
        self, request_id: str, processed_computed_tokens: int, num_prompt_tokens: int | None = None
    ) -> None:
        skipped = self.get_num_skipped_tokens(processed_computed_tokens)
        blocks = self.req_to_blocks.get(request_id)
        if skipped <= 0 or not blocks:
            return
        freed = []
        # Walk back from the newest skippable block: everything before the first null block we meet
        # was freed by an earlier call (pinned blocks are stepped over, never freed).
        for i in range(min(skipped // self.block_size, len(blocks)) - 1, -1, -1):
            if i in self.pinned_blocks:
                continue
            if blocks[i] == self._null_block:
                break
            freed.append(blocks[i])
            blocks[i] = self._null_block
        if freed:
            self.block_pool.free_blocks(freed)


def register() -> None:
    """Register the spec with vLLM (idempotent). The built-in specs are registered first: the
    registry fills itself lazily only while it is empty, so registering ours first would hide them."""
    KVCacheSpecRegistry._ensure_registered()
    KVCacheSpecRegistry.register(SinkWindowSpec, SinkWindowManager, uniform_type_base_spec=SinkWindowSpec)


register()
