"""Evidence: perplexity of fake-quantized W8A8 schemes, so a hint is judged by what it does.

Schemes (every decoder Linear is quantized unless said otherwise; lm_head stays in float in all of
them, as in the usual W8A8 recipes):
    float           no quantization
    naive_static    per-tensor static activations, scale from the calibration absmax
    dynamic         per-token dynamic activations
    int8_outliers   LLM.int8(): outlier columns (|x| >= hinted threshold) in float, rest per token
    smoothquant     SmoothQuant at the hinted alpha on q/k/v, gate/up and down_proj (o_proj: naive
                    static), static per-tensor activations from the smoothed calibration absmax
    skip_hinted     naive_static, with the hinted modules left in float
    prefix          the hinted prefix prefilled in float (its rows pass through), naive_static scales
                    re-calibrated on sequences with the prefix, excluding the prefix rows
    float_prefix    float with the same prefix (the reference for `prefix`: a prefix changes the text's
                    context, so its float perplexity differs slightly)

Perplexity = exp(mean NLL) of predicting tokens 1..T-1 of each held-out sequence from the tokens
before them, the same predicted tokens for every scheme (the prefix adds context, never targets).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sinkhole.experiments.perplexity import perplexity
from sinkhole.quant.calibration import collect_stats
from sinkhole.quant.fakequant import QuantSpec, fake_quantized, smoothing_scales
from sinkhole.quant.stats import CalibrationStats, decoder_linears
from sinkhole.results.quant import CalibrationInfo, QuantModel, QuantValidation, SchemeResult, ValidationHints

SCHEMES = ("float", "naive_static", "dynamic", "int8_outliers", "smoothquant", "skip_hinted", "prefix", "float_prefix")
ALPHAS = (0.5, 0.65, 0.8, 0.9)


def static_specs(stats: CalibrationStats, passthrough: int = 0) -> dict[str, QuantSpec]:
    return {n: QuantSpec("static", absmax=s.absmax, passthrough=passthrough) for n, s in stats.modules.items()}


def smoothquant_specs(lm, stats: CalibrationStats, alpha: float) -> dict[str, QuantSpec]:
    """Static per-tensor specs with SmoothQuant scales on the foldable groups (q/k/v, gate/up, down)."""
    fam = lm.family
    linears = decoder_linears(lm.model, fam)
    groups: dict[str, list[str]] = {}
    for n, s in stats.modules.items():
        groups.setdefault(s.input_group or n, []).append(n)
    foldable = {fam.q_proj, fam.gate_proj, fam.down_proj}
    specs = static_specs(stats)
    for members in groups.values():
        if not {stats.modules[m].kind for m in members} & foldable:
            continue
        a = stats.modules[members[0]].channel_absmax
        w = torch.stack([linears[m][1].weight.detach().abs().amax(dim=0).float().cpu() for m in members]).amax(dim=0)
        s = smoothing_scales(a, w, alpha)
        smoothed_absmax = float((a / s).max())
        for m in members:
            specs[m] = QuantSpec("static", absmax=smoothed_absmax, smooth=s.to(lm.device))
    return specs


def scheme_specs(name: str, lm, stats: CalibrationStats, hints: dict) -> dict[str, QuantSpec]:
    if name in ("float", "float_prefix"):
        return {}
    if name == "naive_static":
        return static_specs(stats)
    if name == "dynamic":
        return {n: QuantSpec("dynamic") for n in stats.modules}
    if name == "int8_outliers":
        return {n: QuantSpec("int8_outliers", threshold=hints["threshold"]) for n in stats.modules}
    if name == "smoothquant":
        return smoothquant_specs(lm, stats, hints["alpha"])
    if name == "skip_hinted":
        specs = static_specs(stats)
        return {n: (QuantSpec("float") if n in hints["skip"] else s) for n, s in specs.items()}
    raise ValueError(f"unknown scheme {name}")


def tune_alpha(
    lm, stats: CalibrationStats, sequences: Sequence[Sequence[int]], alphas: Sequence[float] = ALPHAS, progress=None
) -> tuple[float, dict[float, float]]:
    """The alpha with the lowest calibration perplexity under SmoothQuant static W8A8 (calibration text only).
    `progress(alpha, i, n)` is called before each alpha's perplexity run."""
    ppl = {}
    for i, a in enumerate(alphas):
        if progress:
            progress(a, i, len(alphas))
        with fake_quantized(lm.model, smoothquant_specs(lm, stats, a)):
            ppl[a] = perplexity(lm, sequences)
    best = min(ppl, key=lambda k: ppl[k] if math.isfinite(ppl[k]) else float("inf"))
    return best, ppl


def validate(
    lm,
    stats: CalibrationStats,
    calib: Sequence[Sequence[int]],
    heldout: Sequence[Sequence[int]],
    hints: dict,
    schemes: Sequence[str] = SCHEMES,
    progress=None,
    alpha_basis: dict | None = None,
) -> QuantValidation:
    """Perplexity of each scheme on `heldout`. `hints`: {threshold, alpha, skip, prefix (token ids)};
    `alpha_basis`: how the alpha was chosen (recorded as given)."""
    out: dict[str, float] = {}
    details = {
        "float": "no quantization",
        "naive_static": "per-tensor static activations (calibration absmax)",
        "dynamic": "per-token dynamic activations",
        "int8_outliers": f"LLM.int8 columns |x| >= {hints['threshold']:g} in float, rest per token",
        "smoothquant": f"SmoothQuant alpha {hints['alpha']:g}, static per-tensor",
        "skip_hinted": f"naive_static, {len(hints['skip'])} hinted modules in float",
        "prefix": f"prefix of {len(hints['prefix'])} token(s) prefilled in float, static scales without it",
        "float_prefix": "float with the prefix (reference for `prefix`)",
    }
    prefix = list(hints["prefix"])
    for i, name in enumerate(schemes):
        if progress:
            progress(name, i, len(schemes))
        if name in ("prefix", "float_prefix") and not prefix:
            continue
        if name == "prefix":
            pstats = collect_stats(lm, [prefix + list(s) for s in calib], skip_positions=len(prefix))
            with fake_quantized(lm.model, static_specs(pstats, passthrough=len(prefix))):
                out[name] = perplexity(lm, heldout, prefix=prefix)
            details[name] += (
                f"; outlier tokens left after it: {sum(s.n_outlier_tokens for s in pstats.modules.values())}"
            )
        elif name == "float_prefix":
            out[name] = perplexity(lm, heldout, prefix=prefix)
        else:
            with fake_quantized(lm.model, scheme_specs(name, lm, stats, hints)):
                out[name] = perplexity(lm, heldout)
    ref = out.get("float", float("nan"))
    naive = out.get("naive_static")
    results = []
    for name, ppl in out.items():
        beats = None if name in ("float", "float_prefix", "naive_static") or naive is None else bool(ppl < naive)
        results.append(SchemeResult(name, ppl, ppl - ref, beats, details[name]))
    return QuantValidation(
        results=results,
        hints=ValidationHints(**hints),
        n_heldout_tokens=sum(len(s) - 1 for s in heldout),
        n_heldout_sequences=len(heldout),
        model=QuantModel.from_dict(stats.model),
        calibration=CalibrationInfo(source=stats.source, n_sequences=len(calib), length=len(calib[0])),
        alpha_basis=alpha_basis or {},
    )
