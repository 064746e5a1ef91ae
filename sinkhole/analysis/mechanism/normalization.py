"""Normalization: how RMSNorm turns a spike token into a sparse, fixed vector.

v is a norm's output (its learned scale included) for one token. With C the spike channels:
- sparsity (share of squared mass in the spike channels): sum_{c in C} v_c^2 / ||v||^2.
- cosine across prompts: mean cos(v_t, v_t') over pairs of spike tokens from different prompts
  with the same token id; cosine across spike tokens: pairs with different token ids. Either is
  None when no such pair exists (with a chat template every prompt starts with the same prefix,
  so its first token's vectors are identical by causality and the cross-prompt cosine is 1).
- both before the step-up layer (the attention norm entering layer s) and after it (the norm
  entering layer s+1), with the same numbers for a sample of other tokens as the baseline.
"""

from __future__ import annotations

import numpy as np

from sinkhole.results.mechanism import Normalization, NormStats


def mass_share(v: np.ndarray, channels: list[int]) -> np.ndarray:
    """(N, D) -> (N,) share of squared mass in `channels`."""
    sq = v.astype(np.float64) ** 2
    return sq[:, channels].sum(-1) / np.maximum(sq.sum(-1), 1e-300)


def cosine_matrix(v: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, N) cosine similarities."""
    u = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-30)
    return u @ u.T


def pair_means(cos: np.ndarray, rows: list[int], ids: list[int]) -> dict:
    """Mean cosine over pairs with the same token id from different prompts, and with different ids."""
    same, diff = [], []
    n = len(ids)
    for i in range(n):
        for j in range(i + 1, n):
            if ids[i] == ids[j] and rows[i] != rows[j]:
                same.append(cos[i, j])
            elif ids[i] != ids[j]:
                diff.append(cos[i, j])
    return {
        "cos_across_prompts": float(np.mean(same)) if same else None,
        "n_pairs_prompts": len(same),
        "cos_across_tokens": float(np.mean(diff)) if diff else None,
        "n_pairs_tokens": len(diff),
    }


def mean_offdiag(cos: np.ndarray) -> float | None:
    n = len(cos)
    return float((cos.sum() - np.trace(cos)) / (n * (n - 1))) if n > 1 else None


def normalization(
    before: np.ndarray, after: np.ndarray, n_spike: int, channels: list[int], rows: list[int], ids: list[int]
) -> Normalization:
    """before/after: (S + O, D) norm outputs, the S spike tokens first; rows/ids: their prompt and token id."""
    out = {}
    for name, v in (("before", before), ("after", after)):
        sp, ot = v[:n_spike], v[n_spike:]
        out[name] = NormStats(
            spike_sparsity=float(mass_share(sp, channels).mean()) if len(sp) else None,
            other_sparsity=float(mass_share(ot, channels).mean()) if len(ot) else None,
            **pair_means(cosine_matrix(sp), rows, ids),
            other_mean_cos=mean_offdiag(cosine_matrix(ot)),
        )
    return Normalization(**out)
