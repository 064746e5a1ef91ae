"""A tiny decoder-only transformer whose switches are the paper's ablations, one at a time.

Design decisions:
- One model class, `LabForCausalLM`, a transformers `PreTrainedModel`, so that sinkhole's probe
  reads it unchanged: `ModelProbe(LoadedModel.wrap(model, tokenizer))`. Its modules carry Llama's
  names (`model.layers[i].self_attn.{q,k,v,o}_proj`, `input_layernorm`, `post_attention_layernorm`,
  `mlp.{gate,up,down}_proj`) and, for sandwich norm, Gemma's (`pre_feedforward_layernorm`,
  `post_feedforward_layernorm`), so architecture discovery sees a pre-norm or a sandwich layer
  from the module tree alone. `config.model_type` is "sinkhole-lab", listed nowhere.
- Softmax attention (plain or gated) goes through `ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation)`
  exactly as transformers' own models do (post-RoPE query/key, GQA not repeated), so the probe's
  "sinkhole" attention measures it. Sigmoid and softpick attention are not softmax: they compute
  their weights here and never call the interface, so the probe falls back to `output_attentions`
  and measures the weights the model really uses (rows need not sum to 1; see `sinkhole.lab.run`).
- Everything else is Llama: RoPE, RMSNorm (weight initialised to 1), SwiGLU FFN, no biases, untied
  embeddings, normal(0, 0.02) initialisation.

Switches (`TinyConfig`):
    norm:      "pre"       h += attn(norm(h)); h += ffn(norm(h))                 (Llama)
               "sandwich"  h += norm(attn(norm(h))); h += norm(ffn(norm(h)))     (Gemma-2/3)
               "dyt"       pre-norm with every RMSNorm replaced by DynamicTanh,
                           gamma * tanh(a x) + beta, a learned scalar (init 0.5) (Zhu et al. 2025)
    ffn:       "swiglu"    down(silu(gate(x)) * up(x))                            (Llama)
               "gelu"      down(gelu(up(x))), the same intermediate size          (GPT-2)
               "linear"    one d_model x d_model linear map, no nonlinearity
               "none"      attention only: no FFN (and no FFN norm)
    qk_norm:   RMSNorm over head_dim on queries and keys before RoPE              (Qwen3, OLMo-2)
    attention: "softmax"   softmax(q k^T / sqrt(d))
               "gated"     softmax attention times sigmoid(x W_g), elementwise per head and channel,
                           before o_proj (Qiu et al. 2025, "Gated Attention for LLMs"; Qwen3-Next)
               "sigmoid"   sigmoid(q k^T / sqrt(d) - log(t + 1)) at query t (Ramapuram et al. 2024)
               "softpick"  relu(e^s - 1) / sum_k |e^s - 1| (Zuhri et al. 2025)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

NORMS = ("pre", "sandwich", "dyt")
FFNS = ("swiglu", "gelu", "linear", "none")
ATTENTIONS = ("softmax", "gated", "sigmoid", "softpick")


class TinyConfig(PretrainedConfig):
    model_type = "sinkhole-lab"

    def __init__(
        self,
        vocab_size=64,
        hidden_size=32,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        norm="pre",
        qk_norm=False,
        attention="softmax",
        ffn="swiglu",
        initializer_range=0.02,
        **kwargs,
    ):
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if ffn not in FFNS:
            raise ValueError(f"ffn must be one of {FFNS}, got {ffn!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads = num_attention_heads
        self.head_dim, self.max_position_embeddings, self.rope_theta = head_dim, max_position_embeddings, rope_theta
        self.rms_norm_eps, self.norm, self.qk_norm, self.attention = rms_norm_eps, norm, qk_norm, attention
        self.ffn = ffn
        self.initializer_range = initializer_range
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class DyTNorm(nn.Module):
    """DynamicTanh (Zhu et al. 2025, "Transformers without Normalization"): gamma * tanh(a x) + beta.
    "Norm" in the class name lets architecture discovery place it where RMSNorm would be."""

    def __init__(self, dim: int, alpha: float = 0.5):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(alpha))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.alpha * x) * self.weight + self.bias


def make_norm(cfg: TinyConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.hidden_size
    return DyTNorm(dim) if cfg.norm == "dyt" else RMSNorm(dim, cfg.rms_norm_eps)


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding (rotate-half layout). x: (B, H, T, D); positions: (B, T) -> (B, H, T, D)."""
    D = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    ang = positions.float()[..., None] * inv  # (B, T, D/2)
    cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None], torch.cat([ang.sin()] * 2, -1)[:, None]
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return (x * cos + torch.cat([-x2, x1], -1) * sin).to(x.dtype)


def causal_mask(T: int, device) -> torch.Tensor:
    """(T, T) bool, True where query t may see key k (k <= t)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def variant_weights(scores: torch.Tensor, kind: str) -> torch.Tensor:
    """Attention weights of one variant from raw scores s = q k^T / sqrt(d).

    scores: (B, H, T, T) float32. Returns (B, H, T, T), zero above the diagonal. Softmax rows sum
    to 1; sigmoid rows do not (each weight is in (0, 1)); softpick rows sum to at most 1 and may be
    all zero (a query that attends to nothing).
    """
    T = scores.shape[-1]
    mask = causal_mask(T, scores.device)
    if kind in ("softmax", "gated"):
        return scores.masked_fill(~mask, float("-inf")).softmax(-1)
    if kind == "sigmoid":
        # The bias -log(n) with n = visible keys keeps the row sum near 1 at initialisation.
        n = torch.arange(1, T + 1, device=scores.device, dtype=scores.dtype)[:, None]
        return torch.sigmoid(scores - n.log()) * mask
    if kind == "softpick":
        # relu(e^s - 1) / sum |e^s - 1|, computed as e^-m (e^s - 1) with m = max(0, row max): same ratio, no overflow.
        m = scores.masked_fill(~mask, float("-inf")).amax(-1, keepdim=True).clamp(min=0).detach()
        e = (torch.exp(scores - m) - torch.exp(-m)) * mask
        return F.relu(e) / (e.abs().sum(-1, keepdim=True) + 1e-6)
    raise ValueError(kind)


def eager_attention(query, key, value, kind: str, scaling: float):
    """(B, H, T, D) x3 -> output (B, T, H, D) and weights (B, H, T, T) of any variant."""
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    w = variant_weights(scores, kind)
    return torch.matmul(w.to(value.dtype), value).transpose(1, 2), w


def eager_softmax(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The "eager" entry of the attention interface (the only one that returns weights)."""
    return eager_attention(query, key, value, "softmax", scaling)


class LabAttention(nn.Module):
    def __init__(self, cfg: TinyConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = cfg, layer_idx
        H, D = cfg.num_attention_heads, cfg.head_dim
        self.head_dim, self.scaling = D, D**-0.5
        self.is_causal, self.num_key_value_groups = True, 1  # read by transformers' attention functions
        self.q_proj = nn.Linear(cfg.hidden_size, H * D, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, H * D, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, H * D, bias=False)
        self.o_proj = nn.Linear(H * D, cfg.hidden_size, bias=False)
        if cfg.attention == "gated":
            self.g_proj = nn.Linear(cfg.hidden_size, H * D, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(D, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(D, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, output_attentions: bool = False):
        B, T, _ = x.shape
        shape = (B, T, -1, self.head_dim)
        q, k, v = (p(x).view(shape) for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, T, H, D)
        if self.config.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        q, k = rope(q, positions, self.config.rope_theta), rope(k, positions, self.config.rope_theta)
        kind, impl = self.config.attention, self.config._attn_implementation
        weights = None
        if kind in ("softmax", "gated"):
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager_softmax)
            out, weights = attention(self, q, k, v, None, dropout=0.0, scaling=self.scaling)
        else:  # not softmax: no registered attention function computes it
            out, weights = eager_attention(q, k, v, kind, self.scaling)
        out = out.reshape(B, T, -1)  # (B, T, H*D)
        if kind == "gated":
            out = out * torch.sigmoid(self.g_proj(x))
        return self.o_proj(out), (weights if output_attentions else None)


class LabMLP(nn.Module):
    """SwiGLU (Llama's names: gate_proj, up_proj, down_proj, act_fn)."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class GeluMLP(nn.Module):
    """GPT-2's FFN: no gate, so no product of two projections to amplify one token quadratically."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.act_fn = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(x)))


class LinearMLP(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.down_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(x)


MLPS = {"swiglu": LabMLP, "gelu": GeluMLP, "linear": LinearMLP}


class LabDecoderLayer(nn.Module):
    def __init__(self, cfg: TinyConfig, layer_idx: int):
        super().__init__()
        self.sandwich = cfg.norm == "sandwich"
        self.has_ffn = cfg.ffn != "none"
        self.input_layernorm = make_norm(cfg)
        self.self_attn = LabAttention(cfg, layer_idx)
        # Pre-norm: post_attention_layernorm is the norm in front of the FFN (Llama's naming).
        # Sandwich: it normalises the attention output, and pre_feedforward_layernorm feeds the FFN (Gemma's).
        if self.has_ffn or self.sandwich:
            self.post_attention_layernorm = make_norm(cfg)
        if self.sandwich and self.has_ffn:
            self.pre_feedforward_layernorm = make_norm(cfg)
            self.post_feedforward_layernorm = make_norm(cfg)
        if self.has_ffn:
            self.mlp = MLPS[cfg.ffn](cfg)

    def forward(self, h: torch.Tensor, positions: torch.Tensor, output_attentions: bool = False):
        a, weights = self.self_attn(self.input_layernorm(h), positions, output_attentions)
        if not self.has_ffn:
            return h + (self.post_attention_layernorm(a) if self.sandwich else a), weights
        if self.sandwich:
            h = h + self.post_attention_layernorm(a)
            h = h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))
        else:
            h = h + a
            h = h + self.mlp(self.post_attention_layernorm(h))
        return h, weights


class LabPreTrainedModel(PreTrainedModel):
    config_class = TinyConfig
    base_model_prefix = "model"
    _supports_sdpa = True
    _supports_attention_backend = True  # any function registered with AttentionInterface (the probe's)

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, DyTNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            nn.init.constant_(module.alpha, 0.5)


class LabModel(LabPreTrainedModel):
    def __init__(self, cfg: TinyConfig):
        super().__init__(cfg)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LabDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = make_norm(cfg)
        self.post_init()

    def forward(self, input_ids, position_ids=None, output_attentions=False):
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        h = self.embed_tokens(input_ids)
        attentions = []
        for layer in self.layers:
            h, w = layer(h, position_ids, output_attentions)
            attentions.append(w)
        return self.norm(h), (tuple(attentions) if output_attentions else None)


class LabForCausalLM(LabPreTrainedModel):
    def __init__(self, cfg: TinyConfig):
        super().__init__(cfg)
        self.model = LabModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        output_attentions=False,
        logits_to_keep: int = 0,
        labels=None,
        **kwargs,
    ):
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("the lab model takes unpadded batches only")  # the lab never pads
        h, attentions = self.model(input_ids, position_ids, output_attentions)
        logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1))
        return CausalLMOutputWithPast(loss=loss, logits=logits, attentions=attentions)


def build_model(cfg: TinyConfig, seed: int) -> LabForCausalLM:
    """A freshly initialised model; the same seed gives the same weights for the same shapes."""
    torch.manual_seed(seed)
    model = LabForCausalLM(cfg)
    model.set_attn_implementation("sdpa")
    return model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
