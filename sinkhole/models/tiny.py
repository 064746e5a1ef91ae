"""Tiny random-weight configs of every causal-LM model type in transformers (for the support sweep).

`tiny_config(model_type)` starts from the config class's own defaults and shrinks every size it
knows (2 layers, hidden 64, 4 heads, vocab 128, ...) through the class's fields and attribute_map,
so a new model type needs no entry here. Hybrid layer patterns are cut to 2 layers that keep one
attention layer and one of the other kind. `TinyUnavailable` carries a one-line reason when a type
cannot be built tiny (not decoder-only, needs a vision tower, missing optional package, ...).
"""

from __future__ import annotations

import dataclasses
import importlib

import torch

# canonical name -> value; applied when the config class has the field (directly or via attribute_map)
SIZES = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=128,
    max_window_layers=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=32,
    num_experts=4,
    num_local_experts=4,
    n_routed_experts=4,
    num_experts_per_tok=2,
    n_shared_experts=1,
    n_group=1,
    topk_group=1,
    first_k_dense_replace=1,
    decoder_sparse_step=1,
    moe_layer_freq=1,
    kv_lora_rank=16,
    q_lora_rank=32,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=8,
    sliding_window=6,
    attention_window_size=6,
    n_inner=128,
    ffn_dim=128,
    d_ff=128,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    mamba_n_heads=4,
    mamba_d_head=32,
    mamba_d_state=8,
    mamba_d_ssm=128,
    mamba_head_dim=32,
    mamba_num_heads=4,
    mamba_chunk_size=8,
    n_mamba_heads=4,
    mamba_dt_rank=4,
    mamba_expand=2,
    initializer_range=0.3,
    residual_multiplier=0.5,
    num_layers=2,
    ffn_hidden_size=128,
    expert_ffn_hidden_size=32,
    zero_expert_num=2,
    moe_topk=2,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
    rope_scaling=None,
    rotary_dim=8,
    is_decoder=True,
    use_mamba_kernels=False,
    num_nextn_predict_layers=0,
)
MAX_PARAMS = 16_000_000  # a few seconds to build at most; larger means a sub-config kept its full size
ATTENTION_KINDS = (
    "attention",
    "full_attention",
    "sliding_attention",
    "chunked_attention",
    "attn",
    "global",
    "local",
    "hybrid",
    "sliding",
)


class TinyUnavailable(Exception):
    """This model type cannot be built tiny here; str(err) is the one-line reason."""


def _fields(cls) -> set[str]:
    try:
        return {f.name for f in dataclasses.fields(cls)}
    except TypeError:
        import inspect

        return set(inspect.signature(cls.__init__).parameters)


def _applies(key: str, name: str, default, fields: set[str]) -> bool:
    if key == "head_dim":  # only where the config has its own head_dim; MLA's is the RoPE part's
        try:
            return getattr(default, name, None) is not None and "qk_rope_head_dim" not in fields
        except Exception:  # noqa: BLE001 - per-layer attributes (Gemma-4) refuse global access
            return False
    if key == "num_key_value_heads" and "kv_lora_rank" in fields:
        return False  # multi-head latent attention: one key per query head (set below)
    if key == "is_decoder":  # BERT-style encoders run as causal decoders only with is_decoder=True
        return not getattr(default, "is_decoder", True)
    return True


def _is_attention(t) -> bool:
    return str(t) in ATTENTION_KINDS or ("attention" in str(t) and "linear" not in str(t))


def _pick_two(types: list) -> list[int]:
    """Indices of two layers: the first attention layer and the first layer of another kind."""
    att = [i for i, t in enumerate(types) if _is_attention(t)]
    other = [i for i, t in enumerate(types) if i not in att]
    if att and other:
        return sorted([att[0], other[0]])
    return [0, 1] if len(types) > 1 else [0, 0]


def tiny_config(model_type: str):
    from transformers import CONFIG_MAPPING

    try:
        cls = CONFIG_MAPPING[model_type]
    except (KeyError, ImportError) as err:
        raise TinyUnavailable(f"no config class ({err})") from None
    fields = _fields(cls)
    amap = dict(getattr(cls, "attribute_map", {}) or {})
    try:
        default = cls()
    except Exception as err:  # noqa: BLE001 - any failure is a reason to skip
        raise TinyUnavailable(
            f"default config fails: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
        ) from None
    if getattr(default, "is_encoder_decoder", False):
        raise TinyUnavailable("encoder-decoder, not decoder-only")
    if hasattr(default, "get_text_config") and default.get_text_config() is not default:
        raise TinyUnavailable("multimodal wrapper (its *_text config is swept on its own)")
    kw = {}
    for key, value in SIZES.items():
        name = amap.get(key, key)
        if name in fields and _applies(key, name, default, fields):
            kw[name] = value
    # hybrid layer patterns: keep one attention layer and one of another kind
    types = getattr(default, "layer_types", None)
    if isinstance(types, (list, tuple)) and len(types) >= 2:
        keep = _pick_two(list(types))
        name = amap.get("layer_types", "layer_types")
        if name in fields:
            kw[name] = [types[i] for i in keep]
        for key in ("attn_layer_indices", "full_attn_idxs"):
            if key in fields and getattr(default, key, None) is not None:
                kw[key] = [
                    i for i, j in enumerate(keep) if str(types[j]) in ATTENTION_KINDS or "attention" in str(types[j])
                ]
    if "qk_rope_head_dim" in fields and "head_dim" in fields:  # MLA: RoPE runs on the rope part only
        kw["head_dim"] = SIZES["qk_rope_head_dim"]
    if "kv_lora_rank" in fields and "num_key_value_heads" in fields:
        kw["num_key_value_heads"] = SIZES["num_attention_heads"]
    for key in ("attn_layer_indices", "full_attn_idxs"):  # index lists: layer 1 attention, layer 0 the other kind
        if key in fields:
            kw[key] = [1]
            kw.pop(amap.get("layer_types", "layer_types"), None)
    lt = amap.get("layer_types", "layer_types")
    if lt in fields and isinstance(kw.get(lt), list) and not any(_is_attention(t) for t in kw[lt]):
        kw[lt] = [kw[lt][0], "full_attention"]  # an all-SSM default: make the second layer attention
    for period, offset in (("attn_layer_period", "attn_layer_offset"), ("expert_layer_period", "expert_layer_offset")):
        if period in fields:
            kw[period], kw[offset] = 2, 1
    if "block_types" in fields:
        kw["block_types"] = ["recurrent", "attention"]
    try:
        return cls(**kw)
    except Exception as err:  # noqa: BLE001
        if isinstance(kw.get(lt), list) and "full_attention" in kw[lt]:  # older spelling of the layer kind
            kw[lt] = [t if t != "full_attention" else "attention" for t in kw[lt]]
            try:
                return cls(**kw)
            except Exception:  # noqa: BLE001
                pass
        raise TinyUnavailable(
            f"tiny config rejected: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
        ) from None


def tiny_model(model_type: str, seed: int = 0):
    """(model, config) of a 2-layer random float32 *ForCausalLM, or TinyUnavailable."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        cfg = tiny_config(model_type)
    except TinyUnavailable:
        raise
    except Exception as err:  # noqa: BLE001
        raise TinyUnavailable(f"tiny config fails: {type(err).__name__}: {str(err).splitlines()[0][:120]}") from None
    try:
        model_cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
    except (AttributeError, ImportError) as err:
        raise TinyUnavailable(f"model class unavailable ({str(err).splitlines()[0][:120]})") from None
    try:
        with torch.device("meta"):  # count parameters first: some sub-configs keep full-size defaults
            n = sum(p.numel() for p in model_cls(cfg).parameters())
    except Exception as err:  # noqa: BLE001
        raise TinyUnavailable(
            f"tiny model fails to build: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
        ) from None
    if n > MAX_PARAMS:
        raise TinyUnavailable(f"not tiny: {n / 1e6:.0f}M parameters with the generic sizes")
    torch.manual_seed(seed)
    try:
        model = model_cls(cfg).float().eval()
        if hasattr(model, "set_default_language"):  # X-MOD: adapters per language; any one will do
            model.set_default_language(next(iter(getattr(cfg, "languages", None) or ["en_XX"])))
    except Exception as err:  # noqa: BLE001
        raise TinyUnavailable(
            f"tiny model fails to build: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
        ) from None
    return model


def causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


__all__ = ["TinyUnavailable", "causal_lm_types", "tiny_config", "tiny_model", "importlib"]
