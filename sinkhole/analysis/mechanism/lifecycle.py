"""Lifecycle of a spike, block by block (Sun, Canziani, LeCun, Zhu 2026, Table 1).

Blocks are counted as the paper does: 2L blocks, attention and FFN alternating. Block b = 2l is the
attention block of decoder layer l, block b = 2l + 1 its FFN block. With e the embedding output,
a_l / f_l the attention / FFN block's contribution to the residual (`family.attn_out` /
`family.ffn_out`, so a sandwich model's post-block norm is included) and h_l the layer output:

    r_{-1} = e,   r_{2l} = h_{l-1} + a_l  (h_{-1} = e),   r_{2l+1} = h_l = r_{2l} + f_l
    o_{2l} = a_l,  o_{2l+1} = f_l                                    (the block's own output)

Rule (the core's `step_indices`, same STEP_FRACTION = 10%, applied to blocks): with P = max_b ||r_b[t]||,
- step-up block:   ||r_b|| - ||r_{b-1}|| >= 0.1 P (the block injects the spike)
- step-down block: ||r_{b-1}|| - ||r_b|| >= 0.1 P (it cancels it); `cancels` says whether the
  block's output at the token's top channel has the opposite sign of the incoming residual there.
- rise = first step-up block; fall = last step-down block (None if the spike never falls);
  plateau = the blocks strictly between them.

Relation to the core rule (`sinkhole.analysis.core.step_layers`): the core looks at layer outputs
only, n_l - n_{l-1} = delta_{2l} + delta_{2l+1}. A layer whose two blocks together clear 10% is a
core step-up layer; when one block does the work (the usual case: the FFN), the block rule names
that block and its layer is the core's step-up layer. The two can disagree only when a layer's
blocks pull in opposite directions or each add less than 10%.
"""

from __future__ import annotations

import numpy as np

from sinkhole.analysis.core import STEP_FRACTION, step_indices
from sinkhole.results.mechanism import BlockLifecycle, BlockTrace, Lifecycle, LifecycleToken


def block_residuals(embed: np.ndarray, attn_out: np.ndarray, layer_out: np.ndarray) -> np.ndarray:
    """(D,), (L, D), (L, D) -> (2L, D) residual after each block: r_{2l} = h_{l-1} + a_l, r_{2l+1} = h_l."""
    L, D = layer_out.shape
    prev = np.concatenate([embed[None], layer_out[:-1]])  # h_{l-1}
    r = np.empty((2 * L, D), dtype=np.float32)
    r[0::2] = prev + attn_out
    r[1::2] = layer_out
    return r


def block_outputs(attn_out: np.ndarray, ffn_out: np.ndarray) -> np.ndarray:
    """(L, D), (L, D) -> (2L, D), attention and FFN outputs interleaved."""
    L, D = attn_out.shape
    o = np.empty((2 * L, D), dtype=np.float32)
    o[0::2], o[1::2] = attn_out, ffn_out
    return o


def top_channels(x: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> channels (N, k) by |x| (largest first) and the signed values there."""
    idx = np.argsort(-np.abs(x), axis=-1)[:, :k]
    return idx, np.take_along_axis(x, idx, axis=-1)


def step_blocks(
    embed_norm: float, resid_norms: np.ndarray, fraction: float = STEP_FRACTION
) -> tuple[list[int], list[int]]:
    """(step-up blocks, step-down blocks) from the block residual norms (2L,): the core's rule per block."""
    return step_indices(embed_norm, resid_norms, fraction)


def block_name(b: int) -> str:
    return f"L{b // 2}.{'attn' if b % 2 == 0 else 'ffn'}"


def lifecycle(
    embed: np.ndarray,
    attn_out: np.ndarray,
    ffn_out: np.ndarray,
    layer_out: np.ndarray,
    fraction: float = STEP_FRACTION,
    trace: bool = False,
) -> BlockLifecycle:
    """The block-level lifecycle of one token: embed (D,), attn_out/ffn_out/layer_out (L, D); `trace`:
    keep the top-3 channels of every block (the JSON's `trace`)."""
    r = block_residuals(embed, attn_out, layer_out)
    o = block_outputs(attn_out, ffn_out)
    norms = np.linalg.norm(r, axis=-1)
    up, down = step_blocks(float(np.linalg.norm(embed)), norms, fraction)
    rise = up[0] if up else None
    falls = [b for b in down if rise is None or b > rise]
    fall = falls[-1] if falls else None
    prev = np.concatenate([embed[None], r[:-1]])  # r_{b-1}
    top = int(np.abs(r[int(norms.argmax())]).argmax())  # the token's main spike channel

    def cancels(b: int) -> bool:
        return bool(np.sign(o[b, top]) == -np.sign(prev[b, top]) and prev[b, top] != 0)

    plateau = (
        list(range(rise + 1, fall))
        if rise is not None and fall is not None
        else (list(range(rise + 1, len(r))) if rise is not None else [])
    )
    out = BlockLifecycle(
        step_up_blocks=up,
        step_down_blocks=down,
        rise_block=rise,
        rise=None if rise is None else block_name(rise),
        fall_block=fall,
        fall=None if fall is None else block_name(fall),
        plateau_blocks=len(plateau),
        plateau_mean_norm=float(norms[plateau].mean()) if plateau else None,
        peak_norm=float(norms.max()),
        main_channel=top,
        step_down_cancels={block_name(b): cancels(b) for b in down},
        # How much of the step-up block's jump sits in the main channel: a spike is one or two channels.
        rise_main_channel_value=None if rise is None else float(o[rise, top]),
    )
    if trace:
        rc, rv = top_channels(r)
        oc, ov = top_channels(o)
        out.trace = BlockTrace(
            blocks=[block_name(b) for b in range(len(r))],
            resid_norm=norms.tolist(),
            resid_top3_channels=rc.tolist(),
            resid_top3_values=rv.tolist(),
            block_top3_channels=oc.tolist(),
            block_top3_values=ov.tolist(),
        )
    return out


def rule(fraction: float = STEP_FRACTION) -> str:
    """The rule in one line (the JSON's `lifecycle.rule`)."""
    return f"block b=2l (attention) / 2l+1 (FFN); step when |delta ||r_b||| >= {fraction} x peak"


def summarize(per_token: list[LifecycleToken], fraction: float = STEP_FRACTION) -> Lifecycle:
    """The section: the rule, counts of rise / fall blocks over the spike tokens, and the tokens."""

    def hist(names: list[str | None]) -> dict[str, int]:
        h: dict[str, int] = {}
        for name in names:
            if name is not None:
                h[name] = h.get(name, 0) + 1
        return dict(sorted(h.items(), key=lambda kv: -kv[1]))

    rises = [d.rise_block for d in per_token if d.rise_block is not None]
    return Lifecycle(
        rule=rule(fraction),
        n_spike_tokens=len(per_token),
        rise_counts=hist([d.rise for d in per_token]),
        fall_counts=hist([d.fall for d in per_token]),
        rise_block_mode=max(set(rises), key=rises.count) if rises else None,
        plateau_blocks_mean=float(np.mean([d.plateau_blocks for d in per_token])) if per_token else None,
        tokens=per_token,
    )
