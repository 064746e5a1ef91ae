"""Quantization hints from spike statistics, in the config format of the quantizer a user already runs.

    hints = get_quantization_hints(stats_or_profile, backend="bitsandbytes")
    hints["config"]   # the library's own format (dict); `write_hints` saves it

Backends and what `config` is:
    bitsandbytes    kwargs of transformers' `BitsAndBytesConfig` (8-bit): `llm_int8_threshold`,
                    `llm_int8_skip_modules`. bitsandbytes picks outlier *columns* at run time from the
                    threshold; the channel ids we report are diagnostic only, it takes no channel list.
    llm-compressor  a W8A8 recipe (dict of its YAML recipe format): a `SmoothQuantModifier` with
                    `smoothing_strength` and `mappings`, then a `QuantizationModifier` (int8 weights per
                    channel, static per-tensor int8 input activations) with an `ignore` list.
    torchao         `TorchAoConfig.to_dict()` form: `quant_type` (Int8DynamicActivationInt8WeightConfig)
                    and `modules_to_not_convert`.
    smoothquant     `act_scales` {module name: per-channel input absmax} (the format of the SmoothQuant
                    repository's generate_act_scales.py, saved with torch.save) and `alpha`.
    prefix          the tokens to prefill into the KV cache in float (PrefixQuant, CushionCache) so that
                    the outlier tokens leave the per-tensor activation scales.

How the hints are chosen (see docs/quant.md):
    modules to skip: Linears whose input carries PrefixQuant outlier tokens (a token max > 64x the
        sequence's median token max) in the calibration, plus lm_head. From a profile alone: the
        down_proj of the step-up and step-down layers.
    llm_int8_threshold: 6.0 (LLM.int8()'s value) unless some module then averages more than
        INT8_COLUMN_BUDGET of its channels as float columns per sequence; then the smallest larger edge
        that fits the budget (a larger threshold keeps fewer float columns: faster, less protected).
    alpha: given by the caller (the CLI tunes it on calibration perplexity), else DEFAULT_ALPHA.
    prefix: position 0 when the outlier tokens sit there (the model spikes on whatever comes first),
        represented by the tokenizer's BOS, then the most frequent outlier tokens at later positions.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from sinkhole.errors import SinkholeError
from sinkhole.models.families import FAMILIES, LLAMA, Family
from sinkhole.profiles.profile import SinkProfile
from sinkhole.quant.backends import get_backend
from sinkhole.quant.stats import INT8_OUTLIER_THRESHOLD, OUTLIER_TOKEN_RATIO, THRESHOLD_EDGES, CalibrationStats

DEFAULT_ALPHA = 0.5  # SmoothQuant's default migration strength
INT8_COLUMN_BUDGET = 0.02  # share of a module's channels LLM.int8 may keep in float per sequence
MAX_PREFIX = 4
ALWAYS_SKIP = ["lm_head"]


def skip_modules(source: CalibrationStats | SinkProfile, family: Family | None = None) -> list[str]:
    """Module names to leave unquantized (see the module docstring), lm_head last."""
    if isinstance(source, CalibrationStats):
        hot = source.hot_modules(OUTLIER_TOKEN_RATIO)
    else:
        fam = family or FAMILIES.get(source.model.get("architecture", ""), LLAMA)
        layers = sorted(set(source.step_up_layers) | set(source.step_down_layers))
        hot = [f"{fam.layers}.{l}.{fam.mlp}.{fam.down_proj}" for l in layers]
    return hot + ALWAYS_SKIP


def int8_threshold(stats: CalibrationStats | None) -> tuple[float, dict]:
    """LLM.int8 threshold and the evidence: (threshold, {max_float_column_share, module})."""
    if stats is None:
        return INT8_OUTLIER_THRESHOLD, {"rule": "LLM.int8() default (no calibration statistics)"}
    fits = False
    for t in [e for e in THRESHOLD_EDGES if e >= INT8_OUTLIER_THRESHOLD]:
        # mean float columns per sequence over the budget (one column is always allowed)
        over = {
            n: s.mean_outlier_columns(t) / max(1.0, INT8_COLUMN_BUDGET * s.n_channels)
            for n, s in stats.modules.items()
        }
        worst = max(over, key=over.get)
        if over[worst] <= 1.0:
            fits = True
            break
    s = stats.modules[worst]
    return t, {
        "rule": f"smallest of {list(THRESHOLD_EDGES[3:])} keeping <= max(1, {INT8_COLUMN_BUDGET:.0%}) float "
        "columns per module and sequence",
        "fits_budget": fits,
        "max_float_column_share": s.mean_outlier_columns(t) / s.n_channels,
        "worst_module": worst,
    }


def outlier_channels(stats: CalibrationStats, modules: list[str], top: int = 4) -> dict[str, list[dict]]:
    """Diagnostic: the largest input channels of each named module, with their max/median ratio."""
    out = {}
    for name in modules:
        s = stats.modules.get(name)
        if s is None:
            continue
        out[name] = [c for c in s.to_dict(top=top)["top_channels"]]
    return out


def prefix_tokens(source: CalibrationStats | SinkProfile, tokenizer=None) -> dict:
    """Tokens to prefill: {token_ids, texts, positions_covered, basis}."""
    ids: list[int] = []
    texts: list[str] = []
    bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    if isinstance(source, CalibrationStats):
        positions, by_token = Counter(), Counter()
        for s in source.modules.values():
            positions.update(s.outlier_positions)
            for tid, n in s.outlier_token_ids.items():
                by_token[tid] += n
        first = positions.get(0, 0)
        later = sum(v for k, v in positions.items() if k > 0)
        if first:
            # The model spikes on whatever token comes first: any one fixed token absorbs it.
            ids.append(int(bos) if bos is not None else int(source.first_token_ids[0]))
        # Tokens that spike at later positions in at least a quarter of the sequences (and two of them);
        # an event is counted once however many modules see it.
        events = {
            (ex["sequence"], ex["token_id"])
            for s in source.modules.values()
            for ex in s.examples
            if ex["position"] > 0 and ex["token_id"] >= 0
        }
        later_tokens = Counter(tid for _, tid in events)
        need = max(2, -(-source.n_sequences // 4))
        ids += [t for t, n in later_tokens.most_common() if n >= need and t not in ids]
        ids = ids[:MAX_PREFIX]
        basis = {
            "outlier_tokens_at_position_0": first,
            "outlier_tokens_later": later,
            "rule": "BOS for position-0 outliers, then outlier tokens seen in >= 1/4 of the sequences",
        }
    else:
        n = max(source.pinned_slots, len(source.sink_positions), 1)
        if bos is not None:
            ids.append(int(bos))
        texts = list(source.sink_rule.get("token_texts", []))
        if tokenizer is not None:
            for t in texts:
                enc = tokenizer(t, add_special_tokens=False)["input_ids"]
                if len(enc) == 1 and enc[0] not in ids:
                    ids.append(int(enc[0]))
        ids = ids[: min(MAX_PREFIX, max(n, 1))]
        basis = {"rule": "profile sink rule: BOS, then sink token texts", "sink_positions": source.sink_positions}
    if tokenizer is not None:
        texts = [tokenizer.decode([i]) for i in ids]
    return {"token_ids": ids, "texts": texts, "n_prefix": len(ids), "basis": basis}


def smoothquant_mappings(stats: CalibrationStats | None, family: Family) -> list[list]:
    """llm-compressor mappings [[balance layer regexes], smooth layer regex] for the foldable groups."""
    attn_group = [family.q_proj, family.k_proj, "v_proj"]
    if stats is not None:  # read the real names of the Linears sharing q_proj's input
        groups = {}
        for s in stats.modules.values():
            groups.setdefault(s.input_group, []).append(s.kind)
        for kinds in groups.values():
            if family.q_proj in kinds:
                attn_group = list(dict.fromkeys(kinds))
                break
    maps = [
        [[f"re:.*{k}$" for k in attn_group], f"re:.*{family.attn_norm}$"],
        [[f"re:.*{family.gate_proj}$", f"re:.*{family.up_proj}$"], f"re:.*{family.ffn_norm}$"],
        [[f"re:.*{family.down_proj}$"], f"re:.*{family.up_proj}$"],
    ]
    # a layout without a piece (GPT-2's fused c_attn, a post-norm model's missing input norms) has no such mapping
    return [m for m in maps if "None" not in str(m)]


@dataclass
class HintContext:
    """What a backend's config builder reads: the evidence, the model family and the chosen strength."""

    source: CalibrationStats | SinkProfile
    stats: CalibrationStats | None  # the calibration statistics, None when the source is a profile
    family: Family
    skip: list[str]  # modules to leave unquantized, lm_head last
    alpha: float  # SmoothQuant strength (DEFAULT_ALPHA unless given)
    alpha_given: bool
    tokenizer: object = None


def get_quantization_hints(
    source: CalibrationStats | SinkProfile,
    backend: str = "bitsandbytes",
    family: Family | None = None,
    tokenizer=None,
    alpha: float | None = None,
) -> dict:
    """Hints for one backend: {backend, config, notes, basis} (JSON-ready except smoothquant's tensors)."""
    b = get_backend(backend)
    stats = source if isinstance(source, CalibrationStats) else None
    if not isinstance(source, (CalibrationStats, SinkProfile)):
        raise SinkholeError("hints need calibration statistics or a sinkhole profile")
    if b.needs_stats and stats is None:
        raise SinkholeError(f"{b.name} needs per-channel activation scales: calibrate (drop --profile)")
    fam = family or FAMILIES.get((stats.model if stats else source.model).get("architecture", ""), LLAMA)
    skip = skip_modules(source, fam)
    hot = [m for m in skip if m not in ALWAYS_SKIP]
    basis: dict = {
        "source": "calibration" if stats else "profile",
        "skip_rule": f"inputs with PrefixQuant outlier tokens (token max > {OUTLIER_TOKEN_RATIO:g}x median)"
        if stats
        else "down_proj of the profile's step-up and step-down layers",
    }
    if stats:
        basis["hot_modules"] = {
            m: {
                "absmax": stats.modules[m].absmax,
                "token_ratio_max": stats.modules[m].token_ratio_max,
                "n_outlier_tokens": stats.modules[m].n_outlier_tokens,
            }
            for m in hot
        }
        basis["outlier_channels"] = outlier_channels(stats, hot)
    else:
        basis["spike_channels"] = source.spike_channels
    ctx = HintContext(
        source, stats, fam, skip, DEFAULT_ALPHA if alpha is None else float(alpha), alpha is not None, tokenizer
    )
    config, notes, extra = b.builder()(ctx)
    basis.update(extra)
    return {
        "backend": b.name,
        "model": (stats.model if stats else source.model),
        "config": config,
        "notes": notes,
        "basis": basis,
    }


# ---- the backends' config builders (registered in sinkhole.quant.backends) ---------------------------------


def bitsandbytes_config(ctx: HintContext) -> tuple[dict, list[str], dict]:
    t, why = int8_threshold(ctx.stats)
    config = {"load_in_8bit": True, "llm_int8_threshold": t, "llm_int8_skip_modules": ctx.skip}
    notes = [
        "bitsandbytes selects outlier columns at run time (|x| >= llm_int8_threshold); the "
        "channel ids in basis.outlier_channels are diagnostic only, it takes no channel list."
    ]
    return config, notes, {"threshold": why}


def llm_compressor_recipe(ctx: HintContext) -> tuple[dict, list[str], dict]:
    def int8(strategy: str) -> dict:
        return {"num_bits": 8, "type": "int", "symmetric": True, "strategy": strategy, "dynamic": False}

    config = {
        "default_stage": {
            "default_modifiers": {
                "SmoothQuantModifier": {
                    "smoothing_strength": ctx.alpha,
                    "mappings": smoothquant_mappings(ctx.stats, ctx.family),
                },
                "QuantizationModifier": {
                    "ignore": ctx.skip,
                    "config_groups": {
                        "group_0": {
                            "targets": ["Linear"],
                            "weights": int8("channel"),
                            "input_activations": int8("tensor"),
                        }
                    },
                },
            }
        }
    }
    notes = [
        "static per-tensor activations are where spikes hurt; for dynamic per-token use "
        "`scheme: W8A8` instead of config_groups."
    ]
    if ctx.family.norm_style == "sandwich":
        notes.append(
            "Gemma norms multiply by (1 + weight): smoothing by dividing the norm weight, as "
            "llm-compressor does, is not exact for them; check the smoothed model."
        )
    return config, notes, {"alpha": "given" if ctx.alpha_given else "default"}


def torchao_config(ctx: HintContext) -> tuple[dict, list[str], dict]:
    config = {
        "quant_method": "torchao",
        "quant_type": {"default": {"_type": "Int8DynamicActivationInt8WeightConfig", "_version": 2, "_data": {}}},
        "modules_to_not_convert": ctx.skip,
        "include_input_output_embeddings": False,
        "untie_embedding_weights": False,
    }
    notes = [
        "load with transformers.TorchAoConfig.from_dict(config); torchao's int8 activations are "
        "dynamic per token, so skipping matters less than for static schemes."
    ]
    return config, notes, {}


def smoothquant_scales(ctx: HintContext) -> tuple[dict, list[str], dict]:
    config = {"alpha": ctx.alpha, "act_scales": {n: s.channel_absmax.clone() for n, s in ctx.stats.modules.items()}}
    notes = [
        "act_scales is saved with torch.save as {module name: (in_features,) absmax}, the "
        "format of SmoothQuant's generate_act_scales.py; use with smooth_lm(model, scales, alpha)."
    ]
    return config, notes, {"alpha": "given" if ctx.alpha_given else "default"}


def prefix_config(ctx: HintContext) -> tuple[dict, list[str], dict]:
    notes = [
        "prefill these tokens once, in float, and keep their KV slots; compute the per-tensor "
        "activation scales on sequences that start after them."
    ]
    return prefix_tokens(ctx.source, ctx.tokenizer), notes, {}


def write_hints(hints: dict, path: str | Path) -> list[Path]:
    """Save the config in its backend's format (see each writer). Returns the files written."""
    return get_backend(hints["backend"]).writer()(hints, Path(path))


# ---- the backends' writers, all through the checked writer (a failed write is rescued and reported) --------


def _write(path: Path, data: str | bytes) -> None:
    from sinkhole.io import write_output

    write_output(path, data, "quantization config")


def write_json(hints: dict, path: Path) -> list[Path]:
    _write(path, json.dumps(hints["config"], indent=1))
    return [path]


def write_recipe(hints: dict, path: Path) -> list[Path]:
    """llm-compressor's YAML recipe format, unless the path asks for JSON."""
    if path.suffix.lower() not in (".yaml", ".yml", ""):
        return write_json(hints, path)
    import yaml

    _write(path, yaml.safe_dump(hints["config"], sort_keys=False))
    return [path]


def write_scales(hints: dict, path: Path) -> list[Path]:
    """torch .pt of the activation scales plus a JSON sidecar with the rest of the hints."""
    import io

    buf = io.BytesIO()
    torch.save(hints["config"]["act_scales"], buf)
    pt = path if path.suffix == ".pt" else path.with_suffix(".pt")
    _write(pt, buf.getvalue())
    side = pt.with_suffix(".json")
    meta = {k: v for k, v in hints.items() if k != "config"}
    meta["config"] = {"alpha": hints["config"]["alpha"], "act_scales_file": pt.name}
    _write(side, json.dumps(meta, indent=1))
    return [pt, side]
