"""Spike channels: which, their values along the plateau, and how constant their ratios stay.

Spike channels C are the core's `spike_channels` (entries > threshold x the typical token's largest
entry at the top value's layer), pooled over spike tokens: a channel is kept when it is a spike
channel of at least half of the spike tokens, ordered by mean |value|; the first is the main one.

For spike token t with plateau layers P_t (layer outputs from its rise layer up to, not including,
its fall layer; to the last layer when it never falls) and channel c, v_c(l, t) = h_l[t, c].
- plateau value of c: mean over t and l in P_t of v_c(l, t) (signed).
- ratio of c: rho_c(l, t) = v_c(l, t) / v_main(l, t).
- constancy across layers: mean over t of std_l(rho_c) / |mean_l(rho_c)| (coefficient of variation).
- constancy across prompts/tokens: std_t(mean_l rho_c) / |mean_t(mean_l rho_c)|.
Small coefficients (<< 1) mean the spike is one fixed direction scaled along the plateau.
"""

from __future__ import annotations

import numpy as np

from sinkhole.results.mechanism import ChannelProfile


def pool_channels(per_token_channels: list[list[int]], main: int | None = None, min_share: float = 0.5) -> list[int]:
    """Channels that are spike channels of >= min_share of the tokens: `main` (the most common top-value
    channel) first, then in `core.order_channels` order (mean rank by |h| over the tokens)."""
    n = len(per_token_channels)
    counts: dict[int, int] = {}
    for chans in per_token_channels:
        for c in set(chans):
            counts[c] = counts.get(c, 0) + 1
    from sinkhole.analysis.core import order_channels

    # The order every command uses (core.order_channels), with `main` first: ratios are taken to
    # channels[0]. main is each token's top channel, so the two agree unless the tokens disagree.
    keep = order_channels(per_token_channels, keep=[c for c, k in counts.items() if k >= min_share * n])
    return sorted(keep, key=lambda c: c != main)


def plateau_layers(rise: int | None, fall: int | None, n_layers: int) -> list[int]:
    if rise is None:
        return []
    return list(range(rise, fall if fall is not None else n_layers))


def _cv(x: np.ndarray) -> float | None:
    if len(x) < 2 or not np.isfinite(x).all():
        return None
    m = float(np.mean(x))
    return float(np.std(x) / abs(m)) if m != 0 else None


def channel_profile(values: np.ndarray, plateaus: list[list[int]], channels: list[int]) -> ChannelProfile:
    """values: (L, S, C) residual values at the spike channels of the S spike tokens per layer."""
    L, S, C = values.shape
    per_layer = []
    for c in range(C):
        row = []
        for l in range(L):
            vs = [values[l, t, c] for t in range(S) if l in plateaus[t]]
            row.append(float(np.mean(vs)) if vs else None)
        per_layer.append(row)
    out = ChannelProfile(
        channels=channels,
        main=channels[0] if channels else None,
        plateau_value=[],
        value_by_layer=per_layer,
        ratio_to_main=[],
        ratio_cv_across_layers=[],
        ratio_cv_across_tokens=[],
    )
    for c in range(C):
        vals = [values[P, t, c] for t, P in enumerate(plateaus) if P]
        out.plateau_value.append(float(np.mean(np.concatenate(vals))) if vals else None)
        token_means, token_cvs = [], []
        for t, P in enumerate(plateaus):
            if not P:
                continue
            rho = values[P, t, c] / np.where(values[P, t, 0] == 0, np.nan, values[P, t, 0])
            token_means.append(float(np.mean(rho)))
            token_cvs.append(_cv(rho))
        cvs = [x for x in token_cvs if x is not None]
        out.ratio_to_main.append(float(np.mean(token_means)) if token_means else None)
        out.ratio_cv_across_layers.append(float(np.mean(cvs)) if cvs else None)
        out.ratio_cv_across_tokens.append(_cv(np.array(token_means)) if len(token_means) > 1 else None)
    return out
