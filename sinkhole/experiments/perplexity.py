"""Perplexity of a token sequence, frugal with memory.

Used by the mechanism interventions and the quantization validation, so every perplexity sinkhole
reports is the same quantity: exp(mean NLL) of the predicted tokens, each given all tokens before
it. The decoder runs once; logits are formed `chunk` rows at a time through the output head, so a
[T, vocab] tensor never exists (Gemma-3's vocabulary is 262,144: 1 GB at T = 1024 in float32).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sequence_nll(lm, ids: list[int], start: int = 1, chunk: int = 256) -> tuple[float, int]:
    """Summed NLL of ids[start:] (each given ids[:i]) and how many tokens that is; start >= 1."""
    model = lm.model
    x = torch.tensor([list(ids)], device=lm.device)
    n = len(ids) - 1
    with torch.inference_mode():
        hidden = model.get_decoder()(input_ids=x, use_cache=False).last_hidden_state[0]  # (T, D)
        head = model.get_output_embeddings()
        cap = getattr(model.config, "final_logit_softcapping", None)
        nll = 0.0
        for s in range(start - 1, n, chunk):  # hidden row s predicts token s + 1
            e = min(n, s + chunk)
            logits = head(hidden[s:e]).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            nll += float(F.cross_entropy(logits, x[0, s + 1 : e + 1], reduction="sum"))
    return nll, max(n - (start - 1), 0)


def perplexity(lm, ids: list[int], chunk: int = 256) -> float:
    """exp(mean NLL) of ids[1:] given their prefixes."""
    nll, n = sequence_nll(lm, ids, 1, chunk)
    return math.exp(nll / max(n, 1))
