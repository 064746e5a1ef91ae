# The module docstring is the definitions text (sinkhole.results.definitions.DEFINITIONS, shown by the
# HTML page): every number sinkhole reports about spikes and sinks is computed here, by pure functions
# on a Capture's arrays.
from __future__ import annotations

import numpy as np

from sinkhole.analysis.defaults import DEFAULT_EPSILON, DEFAULT_MIN_SINK_RATE, DEFAULT_THRESHOLD  # noqa: F401
from sinkhole.analysis.detail import detail
from sinkhole.probe.capture import Capture
from sinkhole.results.definitions import DEFINITIONS
from sinkhole.results.report import (
    KV,
    Heads,
    Layers,
    LearnedSinks,
    ModelInfo,
    Overlap,
    Report,
    Residual,
    Sinks,
    SinkToken,
    Spikes,
    SpikeToken,
    Token,
)

__doc__ = DEFINITIONS  # what every number computed below means (see the comment above)

STEP_FRACTION = 0.1


def peak_norm(resid_norm: np.ndarray) -> np.ndarray:
    """(L, T) -> (T,) max over layers of ||h_l[t]||."""
    return resid_norm.max(axis=0)


def spike_scores(resid_norm: np.ndarray) -> np.ndarray:
    """(L, T) -> (T,) per-token spike scores S[t]: peak norm divided by its median over tokens.

    JSON: `spikes.per_token_score`. Not to be confused with `prompt_spike_score` (one number per
    prompt) or the vocabulary sweep's `vocab_spike_scores` (one per vocabulary token fed alone)."""
    peak = peak_norm(resid_norm)
    return peak / max(float(np.median(peak)), 1e-30)


def prompt_spike_score(scores) -> float:
    """(T,) per-token spike scores S[t] -> the prompt's spike score max_t S[t] (JSON: the eval rows'
    and the mechanism summary's `spike_score`)."""
    return float(np.max(scores))


def top_value(top_channels: np.ndarray, top_values: np.ndarray, t: int) -> tuple[float, int, int]:
    """Largest-|.| residual entry of token t over layers: (signed value, layer, channel)."""
    mags = np.abs(top_values[:, t, 0])  # (L,) the largest entry of each layer comes first
    layer = int(mags.argmax())
    return float(top_values[layer, t, 0]), layer, int(top_channels[layer, t, 0])


def step_indices(start_norm: float, norms: np.ndarray, fraction: float = STEP_FRACTION) -> tuple[list[int], list[int]]:
    """The step rule, on one token's sequence of residual norms: (step-up indices, step-down indices).

    With n_{-1} = start_norm and n_i = norms[i] (N,), index i steps up when n_i - n_{i-1} >= fraction x
    max(norms), down when n_{i-1} - n_i >= fraction x max(norms). The one implementation behind the
    core's per-layer rule (`step_layers`) and the mechanism's per-block rule (`lifecycle.step_blocks`).
    """
    n = np.concatenate([[start_norm], norms])
    delta = np.diff(n)  # delta[i] = n_i - n_{i-1}
    peak = float(norms.max())
    return (
        [int(i) for i in np.flatnonzero(delta >= fraction * peak)],
        [int(i) for i in np.flatnonzero(-delta >= fraction * peak)],
    )


def step_layers(
    embed_norm: float, layer_norms: np.ndarray, fraction: float = STEP_FRACTION
) -> tuple[list[int], list[int]]:
    """(step-up layers, step-down layers) of one token from its per-layer residual norms (L,)."""
    return step_indices(embed_norm, layer_norms, fraction)


def spike_channels(
    top_channels: np.ndarray, top_values: np.ndarray, t: int, layer: int, threshold: float
) -> list[int]:
    """Channels of token t at `layer` whose |h| exceeds threshold x the median token's largest |h|."""
    typical = float(np.median(np.abs(top_values[layer, :, 0])))
    mags = np.abs(top_values[layer, t])
    return [int(c) for c, m in zip(top_channels[layer, t], mags) if m > threshold * typical]


def order_channels(per_token: list[list[int]], keep=None) -> list[int]:
    """Channels pooled over tokens in one order: by mean rank in each token's list (a token's spike
    channels come by descending |h|; a channel absent from a list ranks after all of it), then by id.
    `keep`: only these channels (default: all that occur)."""
    chans = {int(c) for chans in per_token for c in chans} if keep is None else {int(c) for c in keep}
    if not per_token:
        return sorted(chans)

    def mean_rank(c: int) -> float:
        return sum(lst.index(c) if c in lst else len(lst) for lst in map(list, per_token)) / len(per_token)

    return sorted(chans, key=lambda c: (mean_rank(c), c))


def attention_rows(alpha: np.ndarray) -> np.ndarray:
    """(L, H, T) -> (L,) bool: layers that are attention (a hybrid's other layers are all NaN)."""
    return ~np.isnan(alpha).all(axis=(1, 2)) if alpha.size else np.zeros(alpha.shape[0], bool)


def attention_mass(alpha: np.ndarray) -> np.ndarray:
    """(L, H, T) -> (T,) mean over layers and heads of alpha (NaN entries, padded heads, left out)."""
    return np.nanmean(alpha, axis=(0, 1)) if np.isnan(alpha).any() else alpha.mean(axis=(0, 1))


def sink_rate(alpha: np.ndarray, epsilon: float) -> np.ndarray:
    """(L, H, T) -> (T,) share of (layer, head) pairs with alpha > epsilon."""
    if not np.isnan(alpha).any():
        return (alpha > epsilon).mean(axis=(0, 1))
    return (alpha > epsilon).sum(axis=(0, 1)) / np.maximum(np.isfinite(alpha).sum(axis=(0, 1)), 1)


def attention_share(colsum: np.ndarray, positions: list[int]) -> float:
    """Share of all attention probability landing on `positions`; colsum (L, H, T) sums over queries."""
    total = float(np.nansum(colsum))
    return float(np.nansum(colsum[..., positions])) / total if positions and total > 0 else 0.0


def learned_sinks(share: np.ndarray, alpha: np.ndarray, top_sink: int) -> LearnedSinks:
    """share (L, H) learned sink share, alpha (L, H, T): the report's `learned_sinks` section."""
    finite = np.isfinite(share)
    flat = np.where(finite, share, -np.inf)
    l, h = np.unravel_index(int(flat.argmax()), share.shape)
    return LearnedSinks(
        definition="mean over queries of the probability given to the learned sink (no key receives it)",
        mean_share=float(np.nanmean(share)),
        max={"layer": int(l), "head": int(h), "share": float(share[l, h])},
        per_layer_mean=[float(np.nanmean(r)) if np.isfinite(r).any() else None for r in share],
        share=share.tolist(),  # [L][H], null on layers that are not attention
        top_token_sink={"position": int(top_sink), "alpha": alpha[:, :, top_sink].tolist()},
    )


def jaccard(a: set[int], b: set[int]) -> float | None:
    return len(a & b) / len(a | b) if (a | b) else None


def spike_token(c: Capture, t: int, scores: np.ndarray, peaks: np.ndarray, threshold: float) -> SpikeToken:
    """Token t's spike row (its top value, spike channels and step layers); `scores`, `peaks`: the
    capture's `spike_scores` and `peak_norm`."""
    value, layer, channel = top_value(c.resid_top_channels, c.resid_top_values, t)
    up, down = step_layers(float(c.embed_norm[t]), c.resid_norm[:, t])
    return SpikeToken(
        position=t,
        text=c.tokens[t],
        score=float(scores[t]),
        max_norm=float(peaks[t]),
        top_value=value,
        layer=layer,
        channel=channel,
        channels=spike_channels(c.resid_top_channels, c.resid_top_values, t, layer, threshold),
        step_up_layers=up,
        step_down_layers=down,
    )


def analyze(
    capture: Capture,
    threshold: float = DEFAULT_THRESHOLD,
    epsilon: float = DEFAULT_EPSILON,
    min_sink_rate: float = DEFAULT_MIN_SINK_RATE,
) -> Report:
    """Spike tokens, sink tokens, their overlap and KV impact of one captured sequence.

    `report.detail` keeps what renderers draw from the Capture (per-head attention, spike-channel
    values; sinkhole.analysis.detail), so the HTML page and eval rows need the report only."""
    from sinkhole.errors import SinkholeError
    from sinkhole.validate import analysis_params

    if not isinstance(capture, Capture):
        raise SinkholeError(f"analyze() needs a Capture from ModelProbe.run(...), not {type(capture).__name__}")
    threshold, epsilon, min_sink_rate = analysis_params(threshold, epsilon, min_sink_rate)
    c = capture
    T = c.n_tokens
    scores = spike_scores(c.resid_norm)
    peaks = peak_norm(c.resid_norm)
    spikes = [spike_token(c, int(t), scores, peaks, threshold) for t in np.flatnonzero(scores > threshold)]
    rows = attention_rows(c.attn_mass)
    alpha = c.attn_mass if rows.all() else c.attn_mass[rows]  # attention layers only
    mass = attention_mass(alpha)
    rate = sink_rate(alpha, epsilon)
    n_pairs = np.isfinite(alpha).sum(axis=(0, 1))

    def sink(t: int) -> SinkToken:
        return SinkToken(int(t), c.tokens[t], float(mass[t]), float(rate[t]), int(round(rate[t] * n_pairs[t])))

    sinks = [sink(t) for t in np.flatnonzero(rate >= min_sink_rate)]
    sinks.sort(key=lambda s: -s.attn_mass)
    spike_pos = {s.position for s in spikes}
    sink_pos = {s.position for s in sinks}
    sink_list = sorted(sink_pos)
    top_sink = int(mass.argmax())
    return Report(
        model=ModelInfo.from_dict(c.model.to_dict()),  # a copy: the report outlives the capture
        prompt=c.prompt,
        chat=c.chat,
        tokens=[Token(i, int(tid), txt) for i, (tid, txt) in enumerate(zip(c.token_ids, c.tokens))],
        spikes=Spikes(threshold=threshold, tokens=spikes, per_token_score=scores.tolist()),
        sinks=Sinks(
            epsilon=epsilon,
            min_sink_rate=min_sink_rate,
            top=sink(top_sink),
            tokens=sinks,
            per_token_mass=mass.tolist(),
            per_token_sink_rate=rate.tolist(),
        ),
        overlap=Overlap(jaccard=jaccard(spike_pos, sink_pos), positions=sorted(spike_pos & sink_pos)),
        kv=KV(
            sink_attention_share=attention_share(c.attn_colsum[rows], sink_list),
            sink_slot_share=len(sink_list) / T,
            n_sink_slots=len(sink_list),
            n_slots=T,
        ),
        layers=Layers(
            max_norm=c.resid_norm.max(axis=1).tolist(),
            median_norm=np.median(c.resid_norm, axis=1).tolist(),
            kinds=list(c.model.layer_kinds) or ["attention"] * c.resid_norm.shape[0],
            attention=[int(l) for l in np.flatnonzero(rows)],
        ),
        heads=Heads(mass_on_top_sink=c.attn_mass[:, :, top_sink].tolist(), top_sink_position=top_sink),
        residual=Residual(
            norm=c.resid_norm.tolist(),
            attn_out_norm=c.attn_out_norm.tolist(),
            ffn_out_norm=c.ffn_out_norm.tolist(),
            embed_norm=c.embed_norm.tolist(),
        ),
        learned_sinks=None if c.sink_share is None else learned_sinks(c.sink_share, c.attn_mass, top_sink),
        detail=detail(c, spikes),
    )
