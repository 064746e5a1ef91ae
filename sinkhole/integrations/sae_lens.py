"""SAELens: drop spike and sink tokens from an `ActivationsStore` before SAE training.

    store = ActivationsStore.from_config(model, cfg)          # as SAELens builds it
    drop_masked_tokens(store, "smollm2-135m", layer=15)       # sinkhole's mask on the same token rows

The filter takes the place of the store's documented filtering step (`get_filtered_llm_batch`,
which drops `exclude_special_tokens`): each raw batch's token rows (B, context_size) are masked by
`sinkhole.token_mask` on a model sinkhole probes (a ModelProbe, name, or the HF model: TransformerLens
models do not call transformers' attention, see sinkhole.integrations.transformer_lens), and the
activations of masked tokens are dropped along with special tokens. Cost: one plain-speed forward
of the probed model per store batch. Only the default `seqpos_slice` is supported (the mask needs
whole rows). SAELens 6.54+ requires transformer-lens < 4 and 6.51 fails to import under
transformer-lens 4, so this runs in its own environment (docs/interp.md).
"""

from __future__ import annotations

import torch

from sinkhole.errors import SinkholeError
from sinkhole.mask.compute import as_probe, token_mask


def keep_rows(probe, rows: torch.Tensor, **mask_settings) -> torch.Tensor:
    """(B, T) token ids -> (B, T) bool, True where sinkhole keeps the token (not spike, not sink)."""
    masks = token_mask(probe, [r.tolist() for r in rows.cpu()], **mask_settings)
    return torch.stack([torch.as_tensor(m.keep) for m in masks])


def drop_masked_tokens(store, model_or_probe, tokenizer=None, **mask_settings):
    """Make `store` (an ActivationsStore) drop masked tokens' activations; returns the store.

    The counts are kept on the store: `store.sinkhole_dropped` and `store.sinkhole_seen` (tokens)."""
    if tuple(getattr(store, "seqpos_slice", (None,))) not in ((None,), (None, None)):
        raise SinkholeError("drop_masked_tokens needs the store's default seqpos_slice (whole token rows)")
    probe = as_probe(model_or_probe, tokenizer)
    store.sinkhole_dropped = store.sinkhole_seen = 0

    def get_filtered_llm_batch(raise_on_epoch_end: bool = False) -> torch.Tensor:
        acts, tokens = store.get_raw_llm_batch(raise_on_epoch_end=raise_on_epoch_end)
        if tokens is None:
            raise SinkholeError("the store gave no token ids (cached activations): the mask needs the tokens")
        keep = keep_rows(probe, tokens.view(-1, store.context_size), **mask_settings).reshape(-1)
        if store.exclude_special_tokens is not None:
            keep &= ~torch.isin(tokens.cpu(), store.exclude_special_tokens.cpu())
        store.sinkhole_seen += len(keep)
        store.sinkhole_dropped += int((~keep).sum())
        return acts[keep.to(acts.device)]

    store.get_filtered_llm_batch = get_filtered_llm_batch
    return store
