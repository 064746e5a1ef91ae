"""Fake W8A8 quantization: int8 rounding simulated in float, to measure what a scheme costs.

Conventions (the usual W8A8 ones):
- symmetric int8 on [-127, 127]: q(x; s) = s * clamp(round(x / s), -127, 127), scale s = absmax / 127;
  an entry inside the range is off by at most s / 2.
- weights: per output channel (one scale per row of W, from that row's absmax).
- activations, one of
    static    per tensor, one scale from the calibration absmax of that Linear's input (clamped at it);
    dynamic   per token, one scale per row from that row's own absmax (computed at run time);
    int8_outliers   LLM.int8(): the columns where some |x| >= threshold in this forward stay in float,
              with their float weight columns; the rest is per-token dynamic int8 (Dettmers et al. 2022);
    float     not quantized (a skipped module).
- smoothing (SmoothQuant, Xiao et al. 2023): x / s and W * s per input channel c, with
  s_c = a_c^alpha / w_c^(1 - alpha), a_c the calibration absmax of x's channel c, w_c the absmax of
  W's column c over every Linear sharing the input; exact in float, and foldable into the preceding norm
  (q/k/v, gate/up) or into up_proj's rows (down_proj) in a real deployment.
- passthrough: the first P rows of every sequence skip quantization (a prefix whose KV is computed once
  in float: PrefixQuant / CushionCache). Under causal attention that equals a float-prefilled cache.

Mechanism: `fake_quantized(model, specs)` swaps each named Linear for a `FakeQuantLinear` wrapping it
and puts the originals back in `finally` (`sinkhole.probe.hooks.swapped`); model code is never edited.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sinkhole.probe.hooks import swapped

QMAX = 127


def int8_fake(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 round trip; `scale` broadcasts against x (0 scales leave zeros)."""
    s = scale.clamp_min(1e-12)
    return (x / s).round().clamp(-QMAX, QMAX) * s


def weight_per_channel(w: torch.Tensor) -> torch.Tensor:
    """W (out, in) quantized with one scale per output row."""
    return int8_fake(w, w.abs().amax(dim=1, keepdim=True) / QMAX)


def act_per_token(x: torch.Tensor) -> torch.Tensor:
    """x (..., C) quantized with one scale per row (token)."""
    return int8_fake(x, x.abs().amax(dim=-1, keepdim=True) / QMAX)


def act_per_tensor(x: torch.Tensor, absmax: float | torch.Tensor) -> torch.Tensor:
    """x quantized with one static scale from a calibration absmax (values beyond it are clamped)."""
    return int8_fake(x, torch.as_tensor(absmax, dtype=x.dtype, device=x.device) / QMAX)


def smoothing_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's s_c = a_c^alpha / w_c^(1-alpha), (C,), guarded against zero channels."""
    a = act_absmax.float().clamp_min(1e-5)
    w = weight_absmax.float().clamp_min(1e-5)
    return (a.pow(alpha) / w.pow(1 - alpha)).clamp_min(1e-5)


def int8_outlier_linear(x: torch.Tensor, w: torch.Tensor, w_q: torch.Tensor, bias, threshold: float) -> torch.Tensor:
    """LLM.int8()'s mixed decomposition: outlier columns in float, the rest int8 per token x per channel."""
    flat = x.reshape(-1, x.shape[-1])
    outlier = (flat.abs() >= threshold).any(dim=0)  # (C,) columns with an outlier in this forward
    inlier = ~outlier
    y = F.linear(act_per_token(x * inlier), w_q * inlier, bias)
    if outlier.any():
        y = y + F.linear(x[..., outlier], w[:, outlier])
    return y


@dataclass
class QuantSpec:
    """How to fake-quantize one Linear. `act`: static | dynamic | int8_outliers | float."""

    act: str
    absmax: float | None = None  # static: calibration absmax of the (smoothed) input
    smooth: torch.Tensor | None = None  # (C,) SmoothQuant scales s; x / s and W * s
    threshold: float | None = None  # int8_outliers
    passthrough: int = 0  # leading rows left in float (a float-prefilled prefix)

    def __post_init__(self):
        if self.act not in ("static", "dynamic", "int8_outliers", "float"):
            raise ValueError(f"unknown activation scheme {self.act!r}")
        if self.act == "static" and self.absmax is None:
            raise ValueError("static activation quantization needs a calibration absmax")
        if self.act == "int8_outliers" and self.threshold is None:
            raise ValueError("int8_outliers needs a threshold")


class FakeQuantLinear(nn.Module):
    """Wraps a Linear: y = q_act(x / s) @ q_w(W * s)^T + b, per its `QuantSpec`."""

    def __init__(self, linear: nn.Linear, spec: QuantSpec):
        super().__init__()
        self.inner, self.spec = linear, spec
        w = linear.weight.detach()
        if spec.smooth is not None:
            w = w * spec.smooth.to(w)
        self.register_buffer("w_q", weight_per_channel(w) if spec.act != "float" else w, persistent=False)
        self.register_buffer("w_s", w, persistent=False)  # smoothed float weight (LLM.int8's float columns)

    def _quant(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if s.act == "float":
            return self.inner(x)
        if s.smooth is not None:
            x = x / s.smooth.to(x)
        if s.act == "int8_outliers":
            return int8_outlier_linear(x, self.w_s, self.w_q, self.inner.bias, s.threshold)
        xq = act_per_tensor(x, s.absmax) if s.act == "static" else act_per_token(x)
        return F.linear(xq, self.w_q, self.inner.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, T, C)
        p = self.spec.passthrough
        if p <= 0:
            return self._quant(x)
        head = self.inner(x[:, :p])
        return torch.cat([head, self._quant(x[:, p:])], dim=1)


@contextmanager
def fake_quantized(model: nn.Module, specs: dict[str, QuantSpec]) -> Iterator[nn.Module]:
    """Swap each named Linear for a FakeQuantLinear while inside; originals restored in `finally`."""

    def make(name: str, spec: QuantSpec):
        def wrap(original: nn.Module) -> nn.Module:
            if not isinstance(original, nn.Linear):
                raise TypeError(f"{name} is a {type(original).__name__}, not a Linear")
            return FakeQuantLinear(original, spec)

        return wrap

    with swapped(model, {name: make(name, spec) for name, spec in specs.items()}):
        yield model
