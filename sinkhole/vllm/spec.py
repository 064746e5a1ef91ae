"""The KV-cache side of sinks + window in vLLM: a cache spec and the manager that frees blocks.

`SinkWindowSpec` is vLLM's `SlidingWindowSpec` plus the token positions to pin. Its manager,
`SinkWindowManager`, frees what `SlidingWindowManager` frees (blocks whose tokens all left the
window) except the blocks holding pinned positions, so a request holds at most
`blocks(pinned) + ceil((window - 1 + in-flight tokens) / block_size) + 1` blocks however long it
runs. Registered through vLLM's own extension point (`KVCacheSpecRegistry.register`), as its own
uniform base type so it is never grouped with plain sliding-window layers (Gemma-3's local layers
keep their own spec and manager).

With prefix caching on, the manager also
- puts the pinned blocks into the prefix cache (vLLM's sliding-window manager, by default, caches
  only the window tails that a resent or extended prompt can hit: `reachable_block_mask`);
- accepts a cache hit of n blocks only if the request's pinned blocks before the window are
  cached too (vLLM's sliding-window search keeps just the window's blocks), and keeps those
  blocks in the request's block table (vLLM's would null them as "skipped");
- pins sink blocks: when a request finishes, its cached sink blocks keep one reference held by
  the manager, so vLLM's block pool never sees them as free and never evicts them. At most
  `pin_blocks` blocks stay pinned (capped at an eighth of the pool), in two tiers as in a
  segmented LRU: a pin is "shared" (a system prompt's first block) once it has served a later
  request's cache hit, or if its content was seen before (an earlier copy was released and
  evicted: the manager remembers the hashes of the last GHOSTS x budget sink blocks it pinned,
  as ARC's ghost lists do); otherwise it is on probation (most traffic: every request has a
  first block). Over the budget, the oldest probation pin is released into vLLM's ordinary LRU
  first, the oldest shared pin only when no probation pin is left; so one-off traffic never
  displaces a shared sink block. Pins are also released, in that order, when a request could
  not otherwise get its blocks: pins never stall live work.

vLLM 0.32 has no hook to choose the block pool's eviction order (`BlockPool` and its free queue
are built by the coordinator), so pinning is done with the pool's own reference counts
(`touch` / `free_blocks` semantics) from the manager, which the spec registry does let us choose.

Importing this module registers the spec: vLLM unpickles the spec in every process that builds a
manager, which imports this module first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from vllm.utils.math_utils import cdiv
from vllm.v1.core.kv_cache_utils import resolve_block_hashes
from vllm.v1.core.single_type_kv_cache_manager import SlidingWindowManager
from vllm.v1.kv_cache_interface import SlidingWindowSpec
from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry

PIN_SHARE = 8  # pins hold at most 1 / PIN_SHARE of the pool's blocks
GHOSTS = 16  # sink-block hashes remembered per pin of budget (a hash is a few dozen bytes)


@dataclass(frozen=True, kw_only=True)
class SinkWindowSpec(SlidingWindowSpec):
    """Sliding window of `sliding_window` tokens (the query included) plus pinned token positions;
    `pin_blocks`: sink blocks kept in the prefix cache after their last request (prefix caching)."""

    pinned: tuple[int, ...] = ()
    pin_blocks: int = 0

    @property
    def pinned_blocks(self) -> frozenset[int]:
        return frozenset(p // self.block_size for p in self.pinned)

    def max_admission_blocks_per_request(self, max_in_flight_tokens: int, max_model_len: int) -> int:
        window = super().max_admission_blocks_per_request(max_in_flight_tokens, max_model_len)
        return min(window + len(self.pinned_blocks), cdiv(max_model_len, self.block_size) + 1)

    def is_uniform_with_collection(self, kv_cache_specs: dict) -> bool:
        return all(
            isinstance(s, SinkWindowSpec)
            and s.sliding_window == self.sliding_window
            and s.pinned == self.pinned
            and s.pin_blocks == self.pin_blocks
            for s in kv_cache_specs.values()
        )


class SinkWindowManager(SlidingWindowManager):
    """SlidingWindowManager that never frees the blocks holding pinned positions, and with prefix
    caching on, finds hits that include them and pins them past their requests (module doc)."""

    def __init__(self, kv_cache_spec: SinkWindowSpec, **kwargs) -> None:
        super().__init__(kv_cache_spec, **kwargs)
        self.pinned_blocks = kv_cache_spec.pinned_blocks
        budget = (self.block_pool.num_gpu_blocks - 1) // PIN_SHARE
        self.pin_budget = min(kv_cache_spec.pin_blocks, budget) if self.enable_caching else 0
        # block id -> [KVCacheBlock, shared], least recently used first
        self.pins: OrderedDict[int, list] = OrderedDict()
        self.seen: OrderedDict[object, None] = OrderedDict()  # hashes of sink blocks pinned before

    # --- while a request runs ---------------------------------------------------------------

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

    # --- prefix-cache hits ------------------------------------------------------------------

    @classmethod
    def find_longest_cache_hit(
        cls,
        block_hashes,
        max_length: int,
        kv_cache_group_ids: list[int],
        block_pool,
        kv_cache_spec,
        drop_eagle_block: bool,
        alignment_tokens: int,
        dcp_world_size: int = 1,
        pcp_world_size: int = 1,
    ):
        """The longest n blocks (n * block_size <= max_length) whose last `need` blocks (the window
        of the first query after the hit) and pinned blocks before them are all cached. Blocks a
        hit does not need are the null block, as in vLLM's sliding-window search."""
        bs = kv_cache_spec.block_size
        if drop_eagle_block or alignment_tokens != bs or dcp_world_size != 1 or pcp_world_size != 1:
            raise NotImplementedError("sinks + window prefix caching: one KV-cache group, no EAGLE/DCP/PCP")
        block_hashes = resolve_block_hashes(block_hashes, block_pool.hash_block_size, bs)
        need = cls._contiguous_blocks_for_hit(kv_cache_spec.sliding_window, bs, False)
        pinned = sorted(kv_cache_spec.pinned_blocks)
        n_max = max_length // bs
        found: dict[int, list] = {}

        def cached(i: int):
            if i not in found:
                found[i] = block_pool.get_cached_block(block_hashes[i], kv_cache_group_ids)
            return found[i]

        run, hit = 0, 0
        for i in range(n_max - 1, -1, -1):  # right to left: the first valid hit is the longest
            if not cached(i):
                run = 0
                continue
            run += 1
            if run >= need and all(cached(p) for p in pinned if p < i):
                hit = i + need
                break
        else:
            hit = run  # a run from block 0 shorter than the window: every block is cached
        start = max(0, hit - need)
        computed = tuple([block_pool.null_block] * hit for _ in kv_cache_group_ids)
        for i in [p for p in pinned if p < start] + list(range(start, hit)):
            for g, blk in enumerate(cached(i)):
                computed[g][i] = blk
        return computed, hit * bs

    @classmethod
    def reachable_block_mask(cls, start_block: int, end_block: int, alignment_tokens, kv_cache_spec, *a, **kw):
        """Which new full blocks enter the prefix cache: vLLM's sliding-window choice (by default
        only the window tails a later hit can use) plus the pinned blocks, which every hit needs."""
        mask = super().reachable_block_mask(start_block, end_block, alignment_tokens, kv_cache_spec, *a, **kw)
        if mask is not None:
            for p in kv_cache_spec.pinned_blocks:
                if start_block <= p < end_block:
                    mask[p - start_block] = True
        return mask

    def _kept(self, i: int, skipped_blocks: int) -> bool:
        return i >= skipped_blocks or i in self.pinned_blocks

    def get_num_blocks_to_allocate(self, request_id, num_tokens, new_computed_blocks, total_computed_tokens, *a, **kw):
        n = super().get_num_blocks_to_allocate(
            request_id, num_tokens, new_computed_blocks, total_computed_tokens, *a, **kw
        )
        if new_computed_blocks and request_id not in self.num_cached_block:
            # vLLM counts the evictable hit blocks inside the window; the pinned ones before it are
            # touched too (taken out of the free queue), so they count as well.
            skipped = self.get_num_skipped_tokens(total_computed_tokens) // self.block_size
            n += sum(
                1
                for i, b in enumerate(new_computed_blocks[:skipped])
                if i in self.pinned_blocks and b.ref_cnt == 0 and not b.is_null
            )
        if self.pins and n > self.block_pool.get_num_free_blocks():
            keep = {b.block_id for b in new_computed_blocks}
            for block_id in self._release_order():
                if n <= self.block_pool.get_num_free_blocks():
                    break
                if block_id not in keep:
                    self._release(block_id)
        return n

    def add_local_computed_blocks(
        self, request_id, new_computed_blocks, num_local_computed_tokens: int, num_external_computed_tokens: int
    ) -> None:
        """vLLM's, except that the pinned blocks before the window stay in the block table."""
        req_blocks = self.req_to_blocks[request_id]
        assert not req_blocks
        total = num_local_computed_tokens + num_external_computed_tokens
        skipped = self.get_num_skipped_tokens(total) // self.block_size
        kept = [b if self._kept(i, skipped) else self._null_block for i, b in enumerate(new_computed_blocks)]
        kept += [self._null_block] * (skipped - len(kept))
        live = [b for b in kept if not b.is_null]
        if self.enable_caching:
            self.block_pool.touch(live)
            for i in self.pinned_blocks:
                if i < len(kept) and kept[i].block_id in self.pins:
                    self.pins[kept[i].block_id][1] = True  # it served a hit: shared
        else:
            assert not live, "computed blocks should be empty when prefix caching is disabled"
        req_blocks.extend(kept)
        self.num_cached_block[request_id] = len(req_blocks)

    # --- when a request ends ----------------------------------------------------------------

    def free(self, request_id: str) -> None:
        """Free the request's blocks (tail first, as vLLM does), except that each cached sink block
        hands the request's reference to the pin set instead of back to the pool."""
        blocks = self.pop_blocks_for_free(request_id)
        if self.pin_budget:
            for i in sorted(self.pinned_blocks):
                blk = blocks[i] if i < len(blocks) else None
                if blk is None or blk.is_null or blk.block_hash is None:
                    continue  # not cached (a partial block): nothing a later request could hit
                if blk.block_id in self.pins:
                    self.pins.move_to_end(blk.block_id)  # the pin's own reference stays
                else:  # the request's reference becomes the pin's
                    self.pins[blk.block_id] = [blk, blk.block_hash in self.seen]
                    blocks[i] = self._null_block
                self.seen[blk.block_hash] = None
                self.seen.move_to_end(blk.block_hash)
            while len(self.seen) > GHOSTS * self.pin_budget:
                self.seen.popitem(last=False)
            for block_id in self._release_order()[: max(0, len(self.pins) - self.pin_budget)]:
                self._release(block_id)
        self.block_pool.free_blocks(reversed([b for b in blocks if not b.is_null]))

    def _release_order(self) -> list[int]:
        """Pins in the order they give way: probation (never hit) oldest first, then shared."""
        return [i for i, (_, shared) in self.pins.items() if not shared] + [
            i for i, (_, shared) in self.pins.items() if shared
        ]

    def _release(self, block_id: int) -> None:
        """The pin's reference goes back to the pool: the block joins vLLM's LRU, still cached."""
        self.block_pool.free_blocks([self.pins.pop(block_id)[0]])

    def release_pins(self) -> int:
        """Hand every pinned block back to vLLM's LRU (e.g. before `reset_prefix_cache`); the count."""
        n = len(self.pins)
        for block_id in self._release_order():
            self._release(block_id)
        return n


def register() -> None:
    """Register the spec with vLLM (idempotent). The built-in specs are registered first: the
    registry fills itself lazily only while it is empty, so registering ours first would hide them."""
    KVCacheSpecRegistry._ensure_registered()
    KVCacheSpecRegistry.register(SinkWindowSpec, SinkWindowManager, uniform_type_base_spec=SinkWindowSpec)


register()
