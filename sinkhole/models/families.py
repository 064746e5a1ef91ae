"""Architecture families: where each piece of a decoder layer lives.

This package is the only place that knows architectures apart (`families.py` and `discovery.py`).
Analyses never branch on `model_type`; they ask a `Family` for module names. A `Family` is
*discovered* from the loaded model (`sinkhole.models.discovery`, reading one short forward that
`sinkhole.probe.trace.family_for` runs): the ModuleList that holds the decoder blocks wherever it
sits, the module that calls transformers' attention interface, and the block's residual structure.
`OVERRIDES` holds what discovery cannot see; `Family.discovery` says which path a model took
("auto" or "override:<model_type>").

Residual bookkeeping (`attn_out` / `ffn_out` name the modules whose outputs are added to the
residual; `ffn_norm` the norm whose output feeds the FFN):
    pre-norm (Llama, GPT-2, OPT):  h_mid = h_in + attn(norm1(h_in));  h_out = h_mid + mlp(norm2(h_mid))
    sandwich (Gemma-2/3):          h_mid = h_in + norm_a(attn(norm1(h_in)));  h_out = h_mid + norm_f(mlp(norm2(h_mid)))
    post (OLMo-2/3, Exaone-4):     h_mid = h_in + norm_a(attn(h_in));  h_out = h_mid + norm_f(mlp(h_mid))
    parallel (GPT-J, NeoX, Falcon): h_out = h_in + attn(norm1(h_in)) + mlp(norm2(h_in))
    scaled (Granite):              h_mid = h_in + s_a attn(...); h_out = h_mid + s_f mlp(...), s fitted per layer
    inside (BLOOM):                the blocks add the residual themselves; contributions are
                                   attn_out(...) - h_in and ffn_out(...) - attn_out(...)
Hybrid models (Jamba, Qwen3-Next, Falcon-H1, ...) have layers whose token mixer is not attention:
`layer_kinds[l]` names each layer's kind, and the per-layer `mixer_outs` / `ffn_outs` say what is
added to the residual there (None: nothing identifiable, its block norms are NaN, never invented).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from sinkhole.errors import SinkholeError

ATTENTION = "attention"


@dataclass(frozen=True)
class Family:
    name: str
    norm_style: str  # "pre", "sandwich", "post", "parallel", "inside" or "unknown"
    layers: str = "model.layers"  # dotted path from the *ForCausalLM module to the decoder layers
    final_norm: str | None = "model.norm"
    embed: str = "model.embed_tokens"
    attn: str = "self_attn"  # the module that calls the attention interface (first attention layer)
    attn_norm: str | None = "input_layernorm"
    attn_out: str | None = "self_attn"
    ffn_norm: str | None = "post_attention_layernorm"
    mlp: str | None = "mlp"
    ffn_out: str | None = "mlp"
    # SwiGLU pieces inside `mlp` (None where the FFN is not a separable gate/up/down SwiGLU, e.g. GPT-2)
    gate_proj: str | None = "gate_proj"
    up_proj: str | None = "up_proj"
    down_proj: str | None = "down_proj"
    act_fn: str | None = "act_fn"  # inside `mlp`: the gate's activation module (SiLU, GELU-tanh, ...)
    k_proj: str | None = "k_proj"
    q_proj: str | None = "q_proj"
    discovery: str = "auto"  # "auto" or "override:<model_type>"
    layer_kinds: tuple[str, ...] = ()  # per layer: "attention", or the other kind ("linear_attention", "mamba", ...)
    mixer_outs: tuple[str | None, ...] = ()  # per layer: token mixer's residual contribution (attn_out for attention)
    ffn_outs: tuple[str | None, ...] = ()
    # per layer: the factor a branch is multiplied by before it is added (Granite's residual_multiplier; 1.0 elsewhere)
    mixer_scales: tuple[float, ...] = ()
    ffn_scales: tuple[float, ...] = ()
    uses_interface: bool = True  # False: the model's attention never calls transformers' interface
    # Layers with several attention sublayers (LongCat-Flash: two MLA modules per layer) list their heads
    # sublayer after sublayer; a module that attends twice itself (differential attention) is measured
    # through eager output_attentions instead (`attn_repeats`).
    attn_per_layer: int = 1
    attn_repeats: bool = False
    notes: tuple[str, ...] = field(default=())

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return get_submodule(model, self.layers)

    def part(self, layer: nn.Module, name: str | None) -> nn.Module:
        """`family.part(layer, family.mlp)`: a named piece of one decoder layer."""
        if name is None:
            raise SinkholeError(f"{self.name}: this piece of the decoder layer was not found (see `sinkhole models`)")
        return get_submodule(layer, name)

    @property
    def swiglu(self) -> bool:
        """True when the FFN has separate gate / up / down projections (the paper's quadratic amplifier)."""
        return None not in (self.mlp, self.gate_proj, self.up_proj, self.down_proj)

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, k in enumerate(self.layer_kinds) if k == ATTENTION]

    def mixer_out_of(self, idx: int) -> str | None:
        return self.mixer_outs[idx] if idx < len(self.mixer_outs) else self.attn_out

    def ffn_out_of(self, idx: int) -> str | None:
        return self.ffn_outs[idx] if idx < len(self.ffn_outs) else self.ffn_out

    def scales_of(self, idx: int) -> tuple[float, float]:
        """(mixer, FFN) factors applied to the branch outputs before the residual add, in layer idx."""
        return (
            self.mixer_scales[idx] if idx < len(self.mixer_scales) else 1.0,
            self.ffn_scales[idx] if idx < len(self.ffn_scales) else 1.0,
        )


LLAMA = Family("llama", "pre")
SANDWICH = Family(
    "gemma-sandwich",
    "sandwich",
    attn_out="post_attention_layernorm",
    ffn_norm="pre_feedforward_layernorm",
    ffn_out="post_feedforward_layernorm",
)
# The names of well-known layouts, for readers of old reports and profiles that carry only
# `model.architecture` (quantization hints). Loaded models always go through discovery.
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

# What discovery cannot see: model_type -> field replacements applied after discovery.
# (Empty entries are not needed: every type that transformers builds tiny is discovered; see
# docs/architectures.md. Add an entry only with a test that shows discovery is wrong there.)
OVERRIDES: dict[str, dict] = {}


def get_submodule(root: nn.Module, dotted: str) -> nn.Module:
    try:
        return root.get_submodule(dotted)
    except AttributeError as err:
        raise SinkholeError(f"{type(root).__name__} has no submodule '{dotted}'") from err


def rotary_inv_freq(model: nn.Module, layer_type: str) -> torch.Tensor:
    """The rotary frequencies a layer of `layer_type` uses, read from the model's rotary module.

    transformers keeps them as a buffer `inv_freq` (one RoPE for all layers) or
    `<layer_type>_inv_freq` (Gemma-3: a local base for sliding layers, a global one for full ones).
    """
    found = None
    for name, buf in model.named_buffers():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == f"{layer_type}_inv_freq":
            return buf
        if leaf == "inv_freq" and found is None:
            found = buf
    if found is None:
        raise SinkholeError(
            f"{type(model).__name__} has no rotary embedding (no inv_freq buffer): SinkCache supports RoPE models only"
        )
    return found
