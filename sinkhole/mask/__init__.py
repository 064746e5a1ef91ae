"""The token mask (spike / sink / norm ratio per token) and its resumable file: see `compute` and `store`."""

from sinkhole.mask.compute import MaskSettings, TokenMask, iter_masks, mask_from_stats, token_mask

__all__ = ["MaskSettings", "TokenMask", "iter_masks", "mask_from_stats", "token_mask"]
