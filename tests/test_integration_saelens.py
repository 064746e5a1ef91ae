"""SAELens with the real package. SAELens 6.54+ pins transformer-lens < 4 and the main venv has
transformer-lens 4 (the `test` extra), so this runs in a venv of its own: `make test-saelens`
(part of `make test`; docs/interp.md). It is skipped where sae_lens does not import (the main venv)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import tiny_llama, wrap
from test_cli import tiny_dir  # noqa: F401  (fixture)

from sinkhole.mask.compute import token_mask
from sinkhole.probe.probe import ModelProbe

LOW = dict(threshold=1.2, epsilon=0.1, min_sink_rate=0.3)
CONTEXT = 16


def store_for(tiny_dir, seqpos_slice=(None,)):  # noqa: F811
    pytest.importorskip("sae_lens")
    from datasets import Dataset
    from sae_lens.training.activations_store import ActivationsStore
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    hf = tiny_llama(max_position_embeddings=64)
    probe = ModelProbe(wrap(copy.deepcopy(hf)))  # sinkhole's copy: the bridge rewrites `hf` in place
    bridge = TransformerBridge.boot_transformers(
        "tiny-llama", hf_model=hf, tokenizer=AutoTokenizer.from_pretrained(tiny_dir), device="cpu"
    )
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 25, (CONTEXT,), generator=g).tolist() for _ in range(8)]
    store = ActivationsStore(
        model=bridge,
        dataset=Dataset.from_dict({"tokens": rows}),
        streaming=False,
        hook_name="blocks.0.hook_resid_post",
        hook_head_index=None,
        context_size=CONTEXT,
        d_in=32,
        n_batches_in_buffer=2,
        total_training_tokens=256,
        store_batch_size_prompts=4,
        train_batch_size_tokens=32,
        prepend_bos=False,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
        seqpos_slice=seqpos_slice,
    )
    return store, probe


def test_store_drops_exactly_the_masked_tokens(tiny_dir):  # noqa: F811
    from sinkhole.integrations.sae_lens import drop_masked_tokens

    store, probe = store_for(tiny_dir)
    seen = []
    raw = store.get_raw_llm_batch
    store.get_raw_llm_batch = lambda **kw: seen.append(raw(**kw)) or seen[-1]
    drop_masked_tokens(store, probe, **LOW)
    got = store.get_filtered_llm_batch()
    acts, tokens = seen[-1]
    masks = token_mask(probe, [r.tolist() for r in tokens.view(-1, CONTEXT)], **LOW)
    keep = torch.as_tensor(np.concatenate([m.keep for m in masks]))
    assert 0 < int((~keep).sum()) < len(keep)
    torch.testing.assert_close(got, acts[keep])
    assert store.sinkhole_dropped == int((~keep).sum()) and store.sinkhole_seen == len(keep)
    # SAELens's own training iterator goes through the filter
    batch = next(store)
    assert batch.shape[-1] == 32 and store.sinkhole_dropped > int((~keep).sum())


def test_store_with_a_sliced_context_is_refused(tiny_dir):  # noqa: F811
    from sinkhole.errors import SinkholeError
    from sinkhole.integrations.sae_lens import drop_masked_tokens

    store, probe = store_for(tiny_dir, seqpos_slice=(1, None))
    with pytest.raises(SinkholeError, match="seqpos_slice"):
        drop_masked_tokens(store, probe)
