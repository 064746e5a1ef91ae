"""`Detail`: what renderers need from a Capture beyond the JSON report, taken once by `analyze()`.

The HTML page draws per-head attention (alpha, and the full maps the probe kept for short inputs)
and the spike channels across layers; eval rows list each spike token's channel values. Those come
from the Capture's arrays, so they are taken here, next to the analysis, and travel in
`Report.detail`; renderers and eval then read the report only. Nothing here is written to JSON.

Shapes: L layers, H heads, T tokens, K the probe's top-K entries per (layer, token), C drawn channels.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from sinkhole.results.report import Detail, SpikeToken

CHANNELS_MAX = 8  # spike channels the page draws across layers


def spike_channel_set(spikes: list[SpikeToken], top_channels: np.ndarray) -> tuple[list[int], str]:
    """Channels to draw across layers: the spike tokens' spike channels, else the most common top-1.

    top_channels (L, T, K), each (layer, token)'s channels by descending |h|."""
    chans: list[int] = []
    for s in spikes:
        for c in [s.channel, *s.channels]:
            if c not in chans:
                chans.append(int(c))
    if chans:
        return chans[:CHANNELS_MAX], "the spike tokens' spike channels"
    common = Counter(top_channels[:, :, 0].ravel().tolist()).most_common(4)
    return [int(c) for c, _ in common], "no spike tokens: the channels most often largest in a token's residual"


def channel_values(top_channels: np.ndarray, top_values: np.ndarray, chans: list[int]) -> np.ndarray:
    """(L, T, K) top-K -> (T, C, L) value of each channel, NaN where it is below the token's top-K."""
    L, T, _ = top_channels.shape
    out = np.full((T, len(chans), L), np.nan)
    for ci, c in enumerate(chans):
        hit = top_channels == c  # (L, T, K); a channel appears at most once per (l, t)
        val = np.where(hit, top_values, 0.0).sum(-1)  # (L, T)
        out[:, ci, :] = np.where(hit.any(-1), val, np.nan).T
    return out


def spike_channel_values(spikes: list[SpikeToken], top_channels: np.ndarray, top_values: np.ndarray) -> list:
    """Per spike token, the signed h at its top layer for each of its spike channels (all in its top K)."""
    out = []
    for s in spikes:
        at = dict(zip(top_channels[s.layer, s.position].tolist(), top_values[s.layer, s.position].tolist()))
        out.append([at[c] for c in s.channels])
    return out


def detail(capture, spikes: list[SpikeToken]) -> Detail:
    """The Capture's arrays that renderers draw, for the report of `capture` with these spike tokens."""
    c = capture
    chans, why = spike_channel_set(spikes, c.resid_top_channels)
    return Detail(
        alpha=c.attn_mass,
        maps=c.attn_maps,
        channels=chans,
        channels_why=why,
        top_k=int(c.resid_top_channels.shape[-1]),
        channel_values=channel_values(c.resid_top_channels, c.resid_top_values, chans),
        spike_channel_values=spike_channel_values(spikes, c.resid_top_channels, c.resid_top_values),
    )
