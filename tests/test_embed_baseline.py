"""The spike's layer-0 baseline (`Capture.embed_norm`) is the residual entering layer 0, i.e. what
`output_hidden_states` reports as hidden_states[0], for every architecture: for absolute-position
models (GPT-2, OPT, GPTBigCode, XGLM) that is the token embedding *plus* the position embedding,
not the token embedding alone (which was 34-79% smaller on real checkpoints and could move the
first step-up layer). Tiny random models from `sinkhole.models.tiny`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_llama

from sinkhole.models.tiny import tiny_model
from sinkhole.probe.loading import LoadedModel
from sinkhole.probe.probe import ModelProbe
from sinkhole.probe.support import IdTokenizer

IDS = [5, 17, 3, 99, 42, 8, 61, 23, 7, 30, 11, 2]
ABSOLUTE = ["gpt2", "opt", "gpt_bigcode", "xglm"]


def _hidden0_norm(model, ids) -> np.ndarray:
    with torch.inference_mode():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    return torch.linalg.vector_norm(out.hidden_states[0][0].float(), dim=-1).numpy()


def _token_embedding_norm(model, ids) -> np.ndarray:
    with torch.inference_mode():
        e = model.get_input_embeddings()(torch.tensor([ids]))[0]
    return torch.linalg.vector_norm(e.float(), dim=-1).numpy()


@pytest.mark.parametrize("model_type", ABSOLUTE + ["llama"])
def test_embed_norm_is_the_residual_entering_layer_0(model_type):
    model = tiny_llama() if model_type == "llama" else tiny_model(model_type)
    if model_type != "llama":  # random init: give the position embedding a size that matters
        for name, p in model.named_parameters():
            if "pos" in name and p.dim() == 2:
                torch.nn.init.normal_(p, std=1.0)
    ids = [i % model.config.vocab_size for i in IDS]
    cap = ModelProbe(LoadedModel.wrap(model, IdTokenizer(), name=model_type)).run(ids)
    want = _hidden0_norm(model, ids)
    np.testing.assert_allclose(cap.embed_norm, want, rtol=1e-4, atol=1e-5)
    if model_type in ABSOLUTE:  # the token embedding alone (the old baseline) is not it
        assert np.abs(_token_embedding_norm(model, ids) - want).max() > 0.1 * want.max()
