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
from pathlib import Path

import torch

from sinkhole.errors import SinkholeError
from sinkhole.models.families import FAMILIES, LLAMA, Family
from sinkhole.profiles.profile import SinkProfile
from sinkhole.quant import BACKENDS
from sinkhole.quant.stats import INT8_OUTLIER_THRESHOLD, OUTLIER_TOKEN_RATIO, THRESHOLD_EDGES, CalibrationStats

DEFAULT_ALPHA = 0.5  # SmoothQuant's default migration strength
INT8_COLUMN_BUDGET = 0.02  # share of a module's channels LLM.int8 may keep in float per sequence
MAX_PREFIX = 4
ALWAYS_SKIP = ["lm_head"]


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        import difflib

        near = difflib.get_close_matches(backend, BACKENDS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise SinkholeError(f"unknown backend '{backend}'{hint}: use one of {', '.join(BACKENDS)}")
    return backend


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


def get_quantization_hints(
    source: CalibrationStats | SinkProfile,
    backend: str = "bitsandbytes",
    family: Family | None = None,
    tokenizer=None,
    alpha: float | None = None,
) -> dict:
    """Hints for one backend: {backend, config, notes, basis} (JSON-ready except smoothquant's tensors)."""
    check_backend(backend)
    stats = source if isinstance(source, CalibrationStats) else None
    if not isinstance(source, (CalibrationStats, SinkProfile)):
        raise SinkholeError("hints need calibration statistics or a sinkhole profile")
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
    notes: list[str] = []
    a = DEFAULT_ALPHA if alpha is None else float(alpha)
    if backend == "bitsandbytes":
        t, why = int8_threshold(stats)
        basis["threshold"] = why
        config = {"load_in_8bit": True, "llm_int8_threshold": t, "llm_int8_skip_modules": skip}
        notes.append(
            "bitsandbytes selects outlier columns at run time (|x| >= llm_int8_threshold); the "
            "channel ids in basis.outlier_channels are diagnostic only, it takes no channel list."
        )
    elif backend == "llm-compressor":
        config = {
            "default_stage": {
                "default_modifiers": {
                    "SmoothQuantModifier": {"smoothing_strength": a, "mappings": smoothquant_mappings(stats, fam)},
                    "QuantizationModifier": {
                        "ignore": skip,
                        "config_groups": {
                            "group_0": {
                                "targets": ["Linear"],
                                "weights": {
                                    "num_bits": 8,
                                    "type": "int",
                                    "symmetric": True,
                                    "strategy": "channel",
                                    "dynamic": False,
                                },
                                "input_activations": {
                                    "num_bits": 8,
                                    "type": "int",
                                    "symmetric": True,
                                    "strategy": "tensor",
                                    "dynamic": False,
                                },
                            }
                        },
                    },
                }
            }
        }
        basis["alpha"] = "given" if alpha is not None else "default"
        notes.append(
            "static per-tensor activations are where spikes hurt; for dynamic per-token use "
            "`scheme: W8A8` instead of config_groups."
        )
        if fam.norm_style == "sandwich":
            notes.append(
                "Gemma norms multiply by (1 + weight): smoothing by dividing the norm weight, as "
                "llm-compressor does, is not exact for them; check the smoothed model."
            )
    elif backend == "torchao":
        config = {
            "quant_method": "torchao",
            "quant_type": {"default": {"_type": "Int8DynamicActivationInt8WeightConfig", "_version": 2, "_data": {}}},
            "modules_to_not_convert": skip,
            "include_input_output_embeddings": False,
            "untie_embedding_weights": False,
        }
        notes.append(
            "load with transformers.TorchAoConfig.from_dict(config); torchao's int8 activations are "
            "dynamic per token, so skipping matters less than for static schemes."
        )
    elif backend == "smoothquant":
        if stats is None:
            raise SinkholeError("smoothquant needs per-channel activation scales: calibrate (drop --profile)")
        config = {"alpha": a, "act_scales": {n: s.channel_absmax.clone() for n, s in stats.modules.items()}}
        basis["alpha"] = "given" if alpha is not None else "default"
        notes.append(
            "act_scales is saved with torch.save as {module name: (in_features,) absmax}, the "
            "format of SmoothQuant's generate_act_scales.py; use with smooth_lm(model, scales, alpha)."
        )
    else:  # prefix
        config = prefix_tokens(source, tokenizer)
        notes.append(
            "prefill these tokens once, in float, and keep their KV slots; compute the per-tensor "
            "activation scales on sequences that start after them."
        )
    return {
        "backend": backend,
        "model": (stats.model if stats else source.model),
        "config": config,
        "notes": notes,
        "basis": basis,
    }


def write_hints(hints: dict, path: str | Path) -> list[Path]:
    """Save the config in the backend's format: YAML recipe (llm-compressor, unless .json), torch .pt
    scales plus a JSON sidecar (smoothquant), JSON otherwise. Returns the files written."""
    from sinkhole.io import write_output

    def write_atomic(p, data):  # the checked writer: a failed write is rescued and reported
        write_output(p, data, "quantization config")

    path = Path(path)
    backend, config = hints["backend"], hints["config"]
    if backend == "llm-compressor" and path.suffix.lower() in (".yaml", ".yml", ""):
        import yaml

        write_atomic(path, yaml.safe_dump(config, sort_keys=False))
        return [path]
    if backend == "smoothquant":
        import io

        buf = io.BytesIO()
        torch.save(config["act_scales"], buf)
        pt = path if path.suffix == ".pt" else path.with_suffix(".pt")
        write_atomic(pt, buf.getvalue())
        side = pt.with_suffix(".json")
        meta = {k: v for k, v in hints.items() if k != "config"}
        meta["config"] = {"alpha": config["alpha"], "act_scales_file": pt.name}
        write_atomic(side, json.dumps(meta, indent=1))
        return [pt, side]
    write_atomic(path, json.dumps(config, indent=1))
    return [path]
