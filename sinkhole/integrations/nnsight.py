"""nnsight 0.8: the token mask inside a trace.

    from nnsight import TransformersModel                      # or NNsight(hf_model)
    lm = TransformersModel(hf_model, task="text-generation", tokenizer=tok)  # wraps, replaces nothing
    mask = token_mask(hf_module(lm), ids)                        # sinkhole on the same weights
    with lm.trace(torch.tensor([ids])):
        h = lm.model.layers[15].output                           # (1, T, D) in transformers 5
        kept = h[:, keep_positions(mask)].save()                 # spike and sink tokens dropped

`kept_activations(lm, ids, layer)` does exactly that for decoder layer `layer` (found by sinkhole's
layout discovery, so no model-specific path). nnsight wraps the model without replacing its
submodules, so sinkhole probes `hf_module(lm)` directly, outside the trace (tests/test_integrations.py).
"""

from __future__ import annotations

import numpy as np
import torch

from sinkhole.mask.compute import TokenMask, token_mask


def hf_module(model) -> torch.nn.Module:
    """The transformers model an nnsight `NNsight` / `TransformersModel` wraps."""
    module = getattr(model, "_module", None)
    if not isinstance(module, torch.nn.Module):
        from sinkhole.errors import SinkholeError

        raise SinkholeError(f"{type(model).__name__} is not an nnsight model (no wrapped torch module)")
    return module


def keep_positions(mask: TokenMask | np.ndarray) -> torch.Tensor:
    """Token positions to keep (long), from a TokenMask or a bool array of masked tokens."""
    masked = mask.masked if isinstance(mask, TokenMask) else np.asarray(mask, bool)
    return torch.as_tensor(np.flatnonzero(~masked), dtype=torch.long)


def envoy_at(model, module: torch.nn.Module):
    """The nnsight Envoy of a submodule of the wrapped model (by its dotted name)."""
    names = {m: n for n, m in hf_module(model).named_modules()}
    envoy = model
    for part in names[module].split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def kept_activations(model, ids: list[int], layer: int, mask: TokenMask | None = None, **mask_settings):
    """(n_kept, D): decoder layer `layer`'s output at the tokens the mask keeps, taken inside one trace.
    Without `mask`, `token_mask(hf_module(model), ids, layer=layer, **mask_settings)` makes it."""
    from sinkhole.probe.trace import family_for

    module = hf_module(model)
    if mask is None:
        mask = token_mask(module, list(ids), layer=layer, tokenizer=getattr(model, "tokenizer", None), **mask_settings)
    keep = keep_positions(mask)
    target = envoy_at(model, family_for(module).decoder_layers(module)[layer])
    with torch.no_grad(), model.trace(torch.tensor([list(ids)])):
        h = target.output
        h = h[0] if isinstance(h, tuple) else h  # decoder layers return a tensor in transformers 5, a tuple before
        kept = h[0, keep].save()
    return kept
