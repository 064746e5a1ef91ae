"""Interventions (Sun et al. 2024, "Massive Activations in Large Language Models"): perplexity on a
fixed text with the spike or the sink taken away.

Text: by default Python's own documentation, `pydoc_data.topics.topics` joined in sorted key order
(a fixed slice: the first `n_tokens` tokens, tokenizer's special tokens added, no chat template);
or any file. Perplexity = exp(mean next-token NLL over tokens 1..N-1).

Variants. Spike positions are the core's spike tokens of the unmodified run on the same text (its
top-scoring token when none passes the threshold, flagged `spike_fallback`); the channels, the
step-up layer and the mean values come from the mechanism's prompts:
- none: the model as is.
- zero: the spike channels set to 0 at the spike tokens in the step-up layer's output.
- mean: set to their mean value at the spike tokens (mean over the mechanism's prompts).
- random_zero (control): as many random non-spike channels set to 0 at the same tokens.
- sink_masked: no query attends to the sink tokens' keys (a sink token still sees itself, so its
  own row is not empty). Note: for a sink at position 0 this is exactly the model run without
  that token (relative positions: the tests check it), so the next token is now the first one
  it can see and may become the new spike and sink. Done with a mask function registered in transformers'
  AttentionMaskInterface and ANDed with the model's own mask, so sliding windows stay intact.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager

import torch

from sinkhole.experiments.perplexity import perplexity
from sinkhole.probe.hooks import attention_implementation, context_value, first_tensor, hooked
from sinkhole.probe.loading import LoadedModel
from sinkhole.results.mechanism import Interventions, PerVariant
from sinkhole.text import pydoc_text

NOSINK = "sinkhole_nosink"
_HIDDEN: contextvars.ContextVar = contextvars.ContextVar("sinkhole_hidden_keys", default=())


def text_ids(tokenizer, text: str | None, n_tokens: int) -> list[int]:
    """The first n_tokens token ids of `text` (default: the pydoc topics), special tokens added."""
    text = pydoc_text() if text is None else text
    # ~4 characters per token: tokenizing a generous prefix keeps it fast and the slice fixed.
    ids = tokenizer(text[: max(64, n_tokens * 12)], add_special_tokens=True)["input_ids"]
    return [int(i) for i in ids[:n_tokens]]


@contextmanager
def channel_edit(lm: LoadedModel, layer: int, positions: list[int], channels: list[int], values=None):
    """Set h_layer[:, positions, channels] to `values` (C,) (zero when None) in the layer's output."""
    target = lm.family.decoder_layers(lm.model)[layer]
    pos = torch.tensor(positions, dtype=torch.long)[:, None]
    ch = torch.tensor(channels, dtype=torch.long)[None, :]

    def hook(module, inputs, output):
        h = first_tensor(output)
        v = torch.zeros(len(channels)) if values is None else torch.as_tensor(values, dtype=torch.float32)
        h[:, pos.to(h.device), ch.to(h.device)] = v.to(h.dtype).to(h.device)[None, None, :]
        return output

    with hooked({target: hook}):
        yield


def _nosink_mask(*args, mask_function=None, **kwargs):
    """sdpa_mask with the hidden keys removed (registered under NOSINK)."""
    from transformers.masking_utils import and_masks, causal_mask_function, sdpa_mask

    mask_function = mask_function or causal_mask_function
    hidden = _HIDDEN.get()
    if hidden:
        size = int(kwargs.get("kv_length", 0)) + int(kwargs.get("kv_offset", 0) or 0)
        lookup = torch.zeros(max(size, max(hidden) + 1), dtype=torch.bool)
        lookup[list(hidden)] = True

        def visible(batch_idx, head_idx, q_idx, kv_idx):
            return ~lookup.to(kv_idx.device)[kv_idx] | (q_idx == kv_idx)

        mask_function = and_masks(mask_function, visible)
        kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, mask_function=mask_function, **kwargs)


@contextmanager
def sink_masked(lm: LoadedModel, positions: list[int]):
    """Within the block, no query attends to the keys at `positions` (except each to itself)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NOSINK, sdpa_attention_forward)
    AttentionMaskInterface.register(NOSINK, _nosink_mask)
    with context_value(_HIDDEN, tuple(int(p) for p in positions)), attention_implementation(lm.model, NOSINK):
        yield


def interventions(
    lm: LoadedModel,
    ids: list[int],
    layer: int,
    spike_positions: list[int],
    channels: list[int],
    mean_values: list[float],
    sink_positions: list[int],
    seed: int = 0,
    status=lambda m: None,
) -> Interventions:
    """Perplexity of `ids` under each variant (see the module docstring); None where not applicable.
    `status(line)` hears about each of the (up to) five forwards before it starts."""
    n = 1 + 3 * bool(spike_positions and channels) + bool(sink_positions)
    step = iter(range(1, n + 1))

    def say(what: str) -> None:
        status(f"interventions {next(step)}/{n}: {what} ({len(ids)} tokens)")

    say("unchanged model")
    ppl = {"none": perplexity(lm, [ids])}
    if spike_positions and channels:
        say("spike channels zeroed")
        with channel_edit(lm, layer, spike_positions, channels):
            ppl["zero"] = perplexity(lm, [ids])
        say("spike channels set to their mean")
        with channel_edit(lm, layer, spike_positions, channels, mean_values):
            ppl["mean"] = perplexity(lm, [ids])
        d = lm.config.hidden_size
        g = torch.Generator().manual_seed(seed)
        pool = [c for c in torch.randperm(d, generator=g).tolist() if c not in set(channels)]
        say("random channels zeroed (control)")
        with channel_edit(lm, layer, spike_positions, pool[: len(channels)]):
            ppl["random_zero"] = perplexity(lm, [ids])
    else:
        ppl.update(zero=None, mean=None, random_zero=None)
    if sink_positions:
        say("sink masked")
        with sink_masked(lm, sink_positions):
            ppl["sink_masked"] = perplexity(lm, [ids])
    else:
        ppl["sink_masked"] = None
    base = ppl["none"]
    return Interventions(
        n_tokens=len(ids),
        layer=layer,
        spike_positions=spike_positions,
        channels=channels,
        mean_values=mean_values,
        sink_positions=sink_positions,
        perplexity=PerVariant(**ppl),
        ratio_to_none=PerVariant(**{k: (None if v is None else v / base) for k, v in ppl.items()}),
    )
