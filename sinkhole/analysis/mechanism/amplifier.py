"""The step-up FFN as a quadratic amplifier (paper Figs. 2-4).

A gated FFN computes out_k(x) = sum_m Wd[k, m] act(g_m) u_m with g = Wg x, u = Wu x
(Wg, Wu: (F, D) = gate_proj / up_proj weights, Wd: (D, F) = down_proj). Where act(g) ~ g (SiLU or
GELU for large positive g), out_k(x) ~ x^T U_k x with

    U_k = Wg^T diag(Wd[k, :]) Wu   (D, D),     S_k = (U_k + U_k^T) / 2,   x^T U_k x = x^T S_k x.

- Activation regime: per token, cos(act input, act output) and ||output|| / ||input|| over the F
  gate units (1 and 1 where act is the identity; SiLU halves small inputs). Spike tokens vs others.
- ||U_k||_F for every output channel k without forming any U_k:
      ||U_k||_F^2 = sum_{m,m'} Wd[k,m] Wd[k,m'] (Wg Wg^T)[m,m'] (Wu Wu^T)[m,m'] = Wd[k] M Wd[k]^T,
  M = (Wg Wg^T) * (Wu Wu^T) elementwise: one (F, F) matrix, then one quadratic form per k.
- Spectrum of S_k for the spike channels only (built one at a time): eigenvalues sorted by |.|,
  dominance = |lambda_1| / |lambda_2|, s* = the eigenvector of lambda_1 (sign arbitrary, so cosines
  are reported as |cos|).
- Alignment of token t: |cos(x_t, s*)| with x_t the FFN input after its norm (what gate/up read).
- Quadratic fit: x^T S_k x against the MLP's actual output at k (ratio), for spike tokens.
- Post-block gain per spike channel: mean over spike tokens of |FFN block output at k| / |MLP
  output at k| (1 for pre-norm; a sandwich model's post-FFN norm sets it).
"""

from __future__ import annotations

import numpy as np
import torch

from sinkhole.results.mechanism import ActivationRegime, Amplifier, AmplifierChannel, RegimeStats


def frobenius_norms(w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> np.ndarray:
    """(F, D), (F, D), (D, F) -> (D,) ||U_k||_F for every output channel k (closed form, float64)."""
    wg, wu, wd = w_gate.double(), w_up.double(), w_down.double()
    m = (wg @ wg.T) * (wu @ wu.T)  # (F, F)
    sq = ((wd @ m) * wd).sum(dim=1)
    return sq.clamp_min(0).sqrt().numpy()


def u_matrix(w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, k: int) -> torch.Tensor:
    """(D, D) U_k = Wg^T diag(Wd[k]) Wu, float64."""
    wg, wu = w_gate.double(), w_up.double()
    return (wg * w_down[k].double()[:, None]).T @ wu


def spectrum(u: torch.Tensor, top: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of S = (U + U^T)/2: the `top` eigenvalues by |.| (signed) and s* (D,)."""
    s = (u + u.T) / 2
    vals, vecs = torch.linalg.eigh(s)
    order = torch.argsort(vals.abs(), descending=True)
    return vals[order[:top]].numpy(), vecs[:, order[0]].numpy()


def abs_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|cos| between rows of a (N, D) and vector b (D,)."""
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b)
    return np.abs(a @ b) / np.maximum(den, 1e-30)


def _mean(x) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()) if x.size else None


def activation_regime(
    act_cos: np.ndarray, act_ratio: np.ndarray, spike_mask: np.ndarray, valid: np.ndarray, name: str
) -> ActivationRegime:
    """act_cos/act_ratio/spike_mask/valid: (B, T). Means for spike tokens and for the other valid tokens."""
    other = valid & ~spike_mask
    return ActivationRegime(
        activation=name,
        spike=RegimeStats(
            cos=_mean(act_cos[spike_mask]), norm_ratio=_mean(act_ratio[spike_mask]), n=int(spike_mask.sum())
        ),
        other=RegimeStats(cos=_mean(act_cos[other]), norm_ratio=_mean(act_ratio[other]), n=int(other.sum())),
    )


def post_block_gain(block_out: np.ndarray, mlp_out: np.ndarray) -> list[float | None]:
    """(S, C), (S, C) -> per channel mean |block_out| / |mlp_out| (None where the MLP wrote 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(block_out) / np.abs(mlp_out)
    return [
        float(np.mean(r[:, c][np.isfinite(r[:, c])])) if np.isfinite(r[:, c]).any() else None
        for c in range(r.shape[1])
    ]


def amplifier(
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    channels: list[int],
    ffn_in: np.ndarray,
    mlp_chan: np.ndarray,
    spike_mask: np.ndarray,
    valid: np.ndarray,
) -> Amplifier:
    """The quadratic-amplifier analysis of one FFN (its `post_block_gain` is the caller's: see
    `post_block_gain`).

    ffn_in: (B, T, D) normalized FFN inputs; mlp_chan: (B, T, C) the MLP's output at `channels`;
    spike_mask, valid: (B, T) bool.
    """
    fro = frobenius_norms(w_gate, w_up, w_down)
    med = float(np.median(fro))
    rank = np.argsort(-fro)
    x_spike, x_other = ffn_in[spike_mask], ffn_in[valid & ~spike_mask]
    per_channel, stars = [], []
    for i, k in enumerate(channels):
        u = u_matrix(w_gate, w_up, w_down, k)
        vals, star = spectrum(u)
        stars.append(star)
        q_spike = np.einsum("nd,de,ne->n", x_spike, ((u + u.T) / 2).numpy(), x_spike) if len(x_spike) else np.zeros(0)
        actual = mlp_chan[spike_mask][:, i]
        per_channel.append(
            AmplifierChannel(
                channel=int(k),
                fro_norm=float(fro[k]),
                fro_over_median=float(fro[k] / max(med, 1e-30)),
                # 1-based like every rank sinkhole prints ("rank 1 of 576" = the largest of all D channels)
                fro_rank=int(np.flatnonzero(rank == k)[0]) + 1,
                top_eigenvalues=vals.tolist(),
                dominance=float(abs(vals[0]) / max(abs(vals[1]), 1e-30)) if len(vals) > 1 else None,
                alignment_spike=_mean(abs_cos(x_spike, star)) if len(x_spike) else None,
                alignment_other=_mean(abs_cos(x_other, star)) if len(x_other) else None,
                # x^T S_k x / actual MLP output: near 1 when act(g) ~ g on the units that matter
                quadratic_over_actual=_mean(q_spike / np.where(actual == 0, np.nan, actual)) if len(x_spike) else None,
            )
        )
        del u
    n = len(stars)
    star_cos = [[float(abs(np.dot(stars[i], stars[j]))) for j in range(n)] for i in range(n)]
    return Amplifier(
        fro_norm_median=med,
        n_channels=int(len(fro)),
        fro_norm_top_channels=[int(k) for k in rank[:8]],
        fro_norm_top_values=[float(fro[k]) for k in rank[:8]],
        channels=per_channel,
        s_star_abs_cos=star_cos,
    )
