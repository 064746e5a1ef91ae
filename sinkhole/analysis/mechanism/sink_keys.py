"""Sink keys and sink heads.

Keys and queries are post-RoPE (as the attention scores see them), gathered by a Recorder tap.
- effective dimension of a set of vectors X (N, Dh), uncentred (the directions the keys span):
  singular values s_i, participation ratio PR = (sum s_i^2)^2 / sum s_i^4, and r90 = the fewest
  singular values holding 90% of sum s_i^2. Sink keys (all sink tokens over all prompts) are
  compared with the same number of other keys (a fixed random sample), since both numbers grow
  with N. N is reported.
- sink head: query head (l, h) whose attention mass on the sink tokens, alpha_{l,h} summed over the
  prompt's sink tokens and averaged over prompts, exceeds epsilon (the core's 0.3).
- query alignment of head (l, h): mean over sampled other tokens' queries q of
  ||P q||^2 / ||q||^2, P = projector onto the r90 leading right-singular directions of the sink
  keys of the head's KV group (baseline for a random subspace: r90 / Dh); and mean cos(q, mean sink key).
"""

from __future__ import annotations

import numpy as np

from sinkhole.results.mechanism import KVHeadDims, QueryAlignment, SinkKeys


def effective_dim(x: np.ndarray, energy: float = 0.9) -> tuple[float, int]:
    """(N, Dh) -> (participation ratio, r90)."""
    if len(x) == 0:
        return 0.0, 0
    s2 = np.linalg.svd(x.astype(np.float64), compute_uv=False) ** 2
    tot = s2.sum()
    if tot <= 0:
        return 0.0, 0
    pr = float(tot**2 / (s2**2).sum())
    r = int(np.searchsorted(np.cumsum(s2) / tot, energy - 1e-12) + 1)
    return pr, min(r, len(s2))


def subspace(x: np.ndarray, r: int) -> np.ndarray:
    """(N, Dh) -> (r, Dh) orthonormal rows spanning the r leading right-singular directions."""
    _, _, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    return vt[:r]


def query_alignment(q: np.ndarray, basis: np.ndarray, mean_key: np.ndarray) -> tuple[float, float]:
    """q (N, Dh): mean projected energy share onto `basis` (r, Dh), mean cos(q, mean_key)."""
    qn = np.maximum((q.astype(np.float64) ** 2).sum(-1), 1e-300)
    share = ((q @ basis.T) ** 2).sum(-1) / qn
    cos = (q @ mean_key) / np.maximum(np.sqrt(qn) * np.linalg.norm(mean_key), 1e-30)
    return float(share.mean()), float(cos.mean())


def sink_keys(
    sink_k: np.ndarray, other_k: np.ndarray, other_q: np.ndarray, head_mass: np.ndarray, epsilon: float, seed: int = 0
) -> SinkKeys:
    """sink_k (L, Ns, Hkv, Dh), other_k (L, O, Hkv, Dh), other_q (L, O, Hq, Dh), head_mass (L, Hq).

    head_mass: attention mass on the sink tokens per head, averaged over prompts.
    """
    L, Ns, Hkv, Dh = sink_k.shape
    Hq = other_q.shape[2]
    G = Hq // Hkv
    rng = np.random.default_rng(seed)
    pick = rng.choice(other_k.shape[1], size=min(Ns, other_k.shape[1]), replace=False) if Ns else np.zeros(0, int)
    kv = {"sink_pr": [], "sink_r90": [], "other_pr": [], "other_r90": []}
    align = {"energy_share": [], "random_share": [], "cos_mean_sink_key": []}
    for l in range(L):
        rows = {k: [] for k in kv}
        arow = {k: [] for k in align}
        for g in range(Hkv):
            pr_s, r_s = effective_dim(sink_k[l, :, g])
            pr_o, r_o = effective_dim(other_k[l, pick, g])
            rows["sink_pr"].append(pr_s), rows["sink_r90"].append(r_s)
            rows["other_pr"].append(pr_o), rows["other_r90"].append(r_o)
            basis = subspace(sink_k[l, :, g], max(r_s, 1)) if Ns else np.zeros((0, Dh))
            mean_key = sink_k[l, :, g].mean(0) if Ns else np.zeros(Dh)
            for h in range(g * G, (g + 1) * G):
                share, cos = (
                    query_alignment(other_q[l, :, h], basis, mean_key) if len(other_q[l]) and Ns else (0.0, 0.0)
                )
                arow["energy_share"].append(share), arow["random_share"].append(max(r_s, 1) / Dh)
                arow["cos_mean_sink_key"].append(cos)
        for k in kv:
            kv[k].append(rows[k])
        for k in align:
            align[k].append(arow[k])
    sink_head = head_mass > epsilon
    share = np.array(align["energy_share"])
    cos = np.array(align["cos_mean_sink_key"])

    def m(x, mask):
        return float(x[mask].mean()) if mask.any() else None

    return SinkKeys(
        n_sink_keys=int(Ns),
        n_other_keys=int(len(pick)),
        head_dim=int(Dh),
        per_layer_kv_head=KVHeadDims(**kv),
        query_alignment=QueryAlignment(**align),
        sink_heads=[[int(l), int(h)] for l, h in zip(*np.nonzero(sink_head))],
        n_sink_heads=int(sink_head.sum()),
        n_heads=int(sink_head.size),
        mean_sink_pr=float(np.mean(kv["sink_pr"])) if Ns else None,
        mean_other_pr=float(np.mean(kv["other_pr"])) if Ns else None,
        mean_sink_r90=float(np.mean(kv["sink_r90"])) if Ns else None,
        mean_other_r90=float(np.mean(kv["other_r90"])) if Ns else None,
        energy_share_sink_heads=m(share, sink_head),
        energy_share_other_heads=m(share, ~sink_head),
        cos_sink_heads=m(cos, sink_head),
        cos_other_heads=m(cos, ~sink_head),
    )
