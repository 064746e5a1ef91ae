"""Perplexity, the one definition every number sinkhole reports uses: exp(mean NLL) of the predicted
tokens, each given all tokens before it.

    perplexity_from_nll(nll_sum, n)      pure: exp(nll_sum / n)
    scored_perplexity(nll)               pure: over per-token NLLs, None entries not scored (a stream)
    sequence_nll(lm, ids, start)         one forward: summed NLL of ids[start:] and how many tokens
    perplexity(lm, sequences, prefix)    a set of sequences, each optionally after a context prefix

Used by the mechanism interventions, the quantization validation and the streaming-cache
evaluation. The decoder runs once per sequence; logits are formed `chunk` rows at a time through
the output head, so a [T, vocab] tensor never exists (Gemma-3's vocabulary is 262,144: 1 GB at
T = 1024 in float32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def perplexity_from_nll(nll_sum: float, n_tokens: int) -> float:
    """exp(mean NLL) from the summed NLL of n_tokens predicted tokens (1.0 for none)."""
    return math.exp(nll_sum / max(n_tokens, 1))


def scored_perplexity(nll: Sequence[float | None]) -> float | None:
    """Perplexity over per-token NLLs, leaving out the None entries (tokens a method did not score);
    None when nothing was scored."""
    vals = [v for v in nll if v is not None]
    return perplexity_from_nll(sum(vals), len(vals)) if vals else None


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


def perplexity(lm, sequences: Sequence[Sequence[int]], prefix: Sequence[int] = (), chunk: int = 256) -> float:
    """exp(mean NLL) over tokens 1.. of each sequence (pooled over all of them), with `prefix`
    prepended as context only (it adds context, never predicted tokens)."""
    total, count = 0.0, 0
    for seq in sequences:
        nll, n = sequence_nll(lm, list(prefix) + list(seq), start=len(prefix) + 1, chunk=chunk)
        total, count = total + nll, count + n
    return perplexity_from_nll(total, count)
