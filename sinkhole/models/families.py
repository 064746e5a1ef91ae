"""Architecture families: where each piece of a decoder layer lives.

This is the only place that knows architectures apart. Analyses never branch on `model_type`;
they ask a `Family` for module names. A new architecture is one entry in `FAMILIES`, or nothing
at all when its layer looks like Llama's (the fallback infers the names from the modules present).

Residual bookkeeping, for a pre-norm layer (Llama):
    h_mid = h_in + self_attn(input_layernorm(h_in))          attention block output = self_attn(...)
    h_out = h_mid + mlp(post_attention_layernorm(h_mid))     FFN block output       = mlp(...)
and for a sandwich-norm layer (Gemma-2/3), where a norm also follows each block:
    h_mid = h_in + post_attention_layernorm(self_attn(input_layernorm(h_in)))
    h_out = h_mid + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h_mid)))
so `attn_out` / `ffn_out` name the module whose output is added to the residual, and `ffn_norm`
names the norm whose input is h_mid and whose output feeds the FFN.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch.nn as nn

from sinkhole.errors import SinkholeError


@dataclass(frozen=True)
class Family:
    name: str
    norm_style: str  # "pre" (pre-norm) or "sandwich" (pre- and post-block norms)
    layers: str = "model.layers"  # dotted path from the *ForCausalLM module to the decoder layers
    final_norm: str = "model.norm"
    embed: str = "model.embed_tokens"
    attn: str = "self_attn"
    attn_norm: str = "input_layernorm"
    attn_out: str = "self_attn"
    ffn_norm: str = "post_attention_layernorm"
    mlp: str = "mlp"
    ffn_out: str = "mlp"
    gate_proj: str = "gate_proj"
    up_proj: str = "up_proj"
    down_proj: str = "down_proj"
    act_fn: str = "act_fn"  # inside `mlp`: the gate's activation module (SiLU, GELU-tanh, ...)
    k_proj: str = "k_proj"
    q_proj: str = "q_proj"

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return get_submodule(model, self.layers)

    def part(self, layer: nn.Module, name: str) -> nn.Module:
        """`family.part(layer, family.mlp)`: a named piece of one decoder layer."""
        return get_submodule(layer, name)


LLAMA = Family("llama", "pre")
SANDWICH = Family(
    "gemma-sandwich",
    "sandwich",
    attn_out="post_attention_layernorm",
    ffn_norm="pre_feedforward_layernorm",
    ffn_out="post_feedforward_layernorm",
)

# model_type -> family. Llama-shaped models need no entry (see `family_for`).
FAMILIES: dict[str, Family] = {
    "llama": LLAMA,
    "mistral": replace(LLAMA, name="mistral"),
    "qwen2": replace(LLAMA, name="qwen2"),
    "qwen3": replace(LLAMA, name="qwen3"),
    "gemma": replace(LLAMA, name="gemma"),
    "gemma2": replace(SANDWICH, name="gemma2"),
    "gemma3_text": replace(SANDWICH, name="gemma3"),
    "gemma3": replace(SANDWICH, name="gemma3"),
}


def get_submodule(root: nn.Module, dotted: str) -> nn.Module:
    try:
        return root.get_submodule(dotted)
    except AttributeError as err:
        raise SinkholeError(f"{type(root).__name__} has no submodule '{dotted}'") from err


def family_for(model: nn.Module) -> Family:
    """The family of a loaded *ForCausalLM model, inferred from module names when not listed."""
    model_type = getattr(model.config, "model_type", "")
    fam = FAMILIES.get(model_type)
    if fam is None:
        # Unlisted: accept it when its decoder layer has Llama's (or Gemma's sandwich) names.
        try:
            layer = LLAMA.decoder_layers(model)[0]
        except (SinkholeError, IndexError, TypeError):
            raise SinkholeError(
                f"unsupported architecture '{model_type}': no decoder layers at model.layers "
                "(add an entry to sinkhole.models.families.FAMILIES)"
            ) from None
        names = {n for n, _ in layer.named_children()}
        if {"self_attn", "mlp", "input_layernorm"} <= names:
            fam = SANDWICH if "pre_feedforward_layernorm" in names else LLAMA
            fam = replace(fam, name=model_type or fam.name)
        else:
            raise SinkholeError(
                f"unsupported architecture '{model_type}': decoder layer has {sorted(names)} "
                "(add an entry to sinkhole.models.families.FAMILIES)"
            )
    return fam
