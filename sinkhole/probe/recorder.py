"""The recorder: what one forward pass accumulates, and the context manager that wires it in.

`recording(model, family, recorder)` installs the probe's hooks with the primitives of
`sinkhole.probe.hooks`: it switches the model to the "sinkhole" attention function, makes
`recorder` the active one, adds forward hooks on the decoder layers and on the modules whose
outputs are added to the residual, and undoes all of it in `finally`, whatever happens inside.

Attention calls are attributed to the decoder layer running at the time (a pre-hook on each layer
sets `current_layer`), so hybrid models whose linear-attention / SSM layers never call attention
leave those layers' statistics empty (None), and models whose attention modules lack `layer_idx`
need nothing special. `attn_layer_calls[l]` counts the calls per layer.

Extensions (the mechanism analyses, for example) add `taps`: callables
`tap(layer, query, key, value)` called once per layer with the post-RoPE tensors, so that they can
keep what they need (a few keys, say) without another attention implementation.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from sinkhole.models.families import Family
from sinkhole.probe.attention import ACTIVE_RECORDER, DEFAULT_BLOCK_BYTES, attention_with_stats, register
from sinkhole.probe.exact_attention import release_scratch
from sinkhole.probe.hooks import attention_implementation, context_value, hooked, observer


def residual_stats(h: torch.Tensor, k: int, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token L2 norm and top-k channels by |value| of a residual-shaped tensor.

    h: (B, T, D). Returns norm (B, T) float32, channels (B, T, k) int32 (largest |h| first), and the
    signed values (B, T, k) float32 at those channels. Long inputs go in token chunks so that the
    float32 copy stays small next to the forward's own activations (same numbers, token by token).
    """
    if h.shape[1] > chunk:
        parts = [residual_stats(h[:, i : i + chunk], k, chunk) for i in range(0, h.shape[1], chunk)]
        return tuple(torch.cat(p, dim=1) for p in zip(*parts))
    hf = h.float()
    norm = torch.linalg.vector_norm(hf, dim=-1)
    top = torch.topk(hf.abs(), k=min(k, hf.shape[-1]), dim=-1)
    values = torch.gather(hf, -1, top.indices)
    return norm, top.indices.to(torch.int32), values


def plain_attention(query, key, value, mask, scaling):
    """Attention that is not causal attention over tokens (Inkling-2's attention over earlier blocks'
    states: no mask, not causal), computed as transformers' eager does and not measured."""
    w = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if mask is not None:
        w = w.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else w + mask
    p = torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(p, value).transpose(1, 2).contiguous()


class Recorder:
    """Accumulates one batch's statistics on the CPU. B sequences padded to T tokens on the left.

    query_valid: (B, T) bool, False on padding. keep_maps: keep full attention probabilities.
    """

    def __init__(
        self,
        n_layers: int,
        query_valid: torch.Tensor,
        top_k: int = 8,
        keep_maps: bool = False,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        progress=None,
    ):
        B, T = query_valid.shape
        self.n_layers, self.top_k = n_layers, top_k
        self.query_valid = query_valid
        self.all_valid = bool(query_valid.all())  # no padding: skip the per-row validity multiply
        self.keep_maps, self.block_bytes, self.progress = keep_maps, block_bytes, progress
        self.attn_colsum: list[torch.Tensor | None] = [None] * n_layers  # each (B, H, T)
        self.attn_maps: list[torch.Tensor | None] = [None] * n_layers  # each (B, H, T, T) f16
        self.sink_mass: list[torch.Tensor | None] = [None] * n_layers  # each (B, H): learned sinks' mass
        self.attn_layer_calls = [0] * n_layers
        self.current_layer: int | None = None
        self.layer_input: torch.Tensor | None = None  # for blocks that add the residual themselves
        self.mixer_output: torch.Tensor | None = None
        self.resid_norm = torch.zeros(n_layers, B, T)
        self.resid_top_channels = torch.zeros(n_layers, B, T, top_k, dtype=torch.int32)
        self.resid_top_values = torch.zeros(n_layers, B, T, top_k)
        # NaN until measured: a layer whose block contributions are unknown keeps NaN, never a made-up 0
        self.attn_out_norm = torch.full((n_layers, B, T), float("nan"))
        self.ffn_out_norm = torch.full((n_layers, B, T), float("nan"))
        self.embed_norm = torch.zeros(B, T)  # ||residual before layer 0|| (layer0_input, else embedding)
        self.embed_from_layer0 = False
        self.attn_calls = 0
        self.resid_calls = 0
        self.saturated = False  # some |h| reached the largest finite value of the model's dtype
        self.taps: list = []

    # --- called from the attention function -------------------------------------------------
    def attention(self, layer, query, key, value, mask, scaling, softcap=None, sinks=None, causal=True, bias=None):
        if query.dim() != 4 or (mask is None and not causal):  # not causal attention over tokens
            return plain_attention(query, key, value, mask, scaling)
        if self.current_layer is not None:  # the decoder layer running now (set by its pre-hook)
            layer = self.current_layer
        elif layer is None:  # called outside any hooked layer: layers run in order
            layer = self.attn_calls % self.n_layers
        self.attn_calls += 1
        self.attn_layer_calls[layer] += 1
        for tap in self.taps:
            tap(layer, query, key, value)
        if bias is not None:  # an additive logits bias: fold it into an additive float mask
            if mask is None:
                Tq, Tk = query.shape[2], key.shape[2]
                mask = torch.ones(Tq, Tk, dtype=torch.bool, device=query.device).tril_(Tk - Tq)[None, None]
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(
                    ~mask, float("-inf")
                )
            mask = mask.float() + bias.float()
        valid = self.query_valid[:, -query.shape[2] :]
        valid = None if self.all_valid else valid.to(query.device)
        out, colsum, probs, sink_mass = attention_with_stats(
            query,
            key,
            value,
            mask,
            scaling,
            softcap=softcap,
            sinks=sinks,
            query_valid=valid,
            block_bytes=self.block_bytes,
            keep_probs=self.keep_maps,
            causal=causal,
        )
        colsum, sink_mass = colsum.cpu(), sink_mass.cpu() if sink_mass is not None else None
        probs = probs.cpu() if probs is not None else None
        if self.attn_layer_calls[layer] > 1:  # another attention sublayer of this layer: its heads follow
            colsum = torch.cat([self.attn_colsum[layer], colsum], dim=1)
            sink_mass = None if sink_mass is None else torch.cat([self.sink_mass[layer], sink_mass], dim=1)
            probs = None if probs is None else torch.cat([self.attn_maps[layer], probs], dim=1)
        self.attn_colsum[layer], self.sink_mass[layer] = colsum, sink_mass
        if probs is not None:
            self.attn_maps[layer] = probs
        return out

    # --- called from forward hooks ----------------------------------------------------------
    def residual(self, layer: int, h: torch.Tensor) -> None:
        if h.dim() == 4 and h.shape[:2] == self.resid_norm.shape[1:]:
            h = h.flatten(2)  # several residual streams (hyper-connections): measured as one state
        if h.dim() != 3 or h.shape[:2] != self.resid_norm.shape[1:]:
            from sinkhole.errors import SinkholeError

            raise SinkholeError(
                f"decoder layer output has shape {tuple(h.shape)}, not (batch, tokens, d_model): "
                "this architecture's residual stream layout is not supported by the probe"
            )
        norm, ch, val = residual_stats(h, self.top_k)
        if h.is_floating_point() and float(val[..., 0].abs().max()) >= torch.finfo(h.dtype).max:
            self.saturated = True
        self.resid_norm[layer], self.resid_top_channels[layer], self.resid_top_values[layer] = (
            norm.cpu(),
            ch.cpu(),
            val.cpu(),
        )
        self.resid_calls += 1
        self.current_layer = None  # the layer is done; its pre-hook sets the next one
        if self.progress is not None:
            self.progress(layer)

    def enter_layer(self, layer: int, h_in: torch.Tensor | None) -> None:
        self.current_layer, self.layer_input = layer, h_in

    def block_norm(self, store: torch.Tensor, layer: int, scale: float, out: torch.Tensor) -> None:
        """||scale * out|| per token (outputs flattened to (B*T, D), as OPT's FFN, are reshaped)."""
        store[layer] = (abs(scale) * torch.linalg.vector_norm(out.float(), dim=-1)).reshape(store.shape[1:]).cpu()

    def block_delta(self, base: str, store: torch.Tensor, layer: int, out: torch.Tensor) -> None:
        """For blocks that add the residual themselves: ||out - layer input|| (base "input", the mixer)
        or ||out - mixer output|| (base "mixer", the FFN)."""
        x = out.float()
        if base == "input" and self.layer_input is not None:
            self.mixer_output = out
            x = x.reshape(self.layer_input.shape) - self.layer_input.float()
        elif base == "mixer" and self.mixer_output is not None:
            x = x.reshape(self.mixer_output.shape) - self.mixer_output.float()
        store[layer] = torch.linalg.vector_norm(x, dim=-1).reshape(store.shape[1:]).cpu()

    def embedding(self, out: torch.Tensor) -> None:
        """The token embedding's norm: the fallback baseline, replaced by the residual entering
        layer 0 when layer 0 shows its input (`layer0_input`)."""
        if not self.embed_from_layer0:
            self.embed_norm[:] = torch.linalg.vector_norm(out.float(), dim=-1).reshape(self.embed_norm.shape).cpu()

    def layer0_input(self, h: torch.Tensor) -> None:
        """||residual entering layer 0|| (what `hidden_states[0]` is): the token embedding plus
        whatever the model adds before the first block (GPT-2's, OPT's, XGLM's position embeddings,
        a scale, a projection). Only the first entry into layer 0 counts."""
        if not self.embed_from_layer0 and h.shape[:-1].numel() == self.embed_norm.numel():
            self.embed_norm[:] = torch.linalg.vector_norm(h.float(), dim=-1).reshape(self.embed_norm.shape).cpu()
            self.embed_from_layer0 = True

    def overflowed(self) -> bool:
        """True when a statistic is inf/NaN or the residual hit its dtype's largest value (float16: 65504)."""
        if self.saturated:
            return True
        parts = [self.resid_norm, self.embed_norm] + [c for c in self.attn_colsum if c is not None]
        if any(not torch.isfinite(p).all() for p in parts):
            return True
        return any(torch.isinf(p).any() for p in (self.attn_out_norm, self.ffn_out_norm))  # NaN = not measured


@contextmanager
def recording(model: torch.nn.Module, family: Family, recorder: Recorder, use_attention: bool = True):
    """Install the recorder's hooks (and the "sinkhole" attention) for the duration of the block."""
    layers = family.decoder_layers(model)
    hooks = [(family.part(model, family.embed), observer(recorder.embedding))]
    inside = family.norm_style == "inside"  # blocks add the residual themselves (BLOOM, BERT-style)
    enters = []
    for idx, layer in enumerate(layers):
        hooks.append((layer, observer(recorder.residual, idx)))
        mixer, ffn = family.mixer_out_of(idx), family.ffn_out_of(idx)
        s_mix, s_ffn = family.scales_of(idx)
        if mixer is not None:
            obs = (
                observer(recorder.block_delta, "input", recorder.attn_out_norm, idx)
                if inside
                else observer(recorder.block_norm, recorder.attn_out_norm, idx, s_mix)
            )
            hooks.append((family.part(layer, mixer), obs))
        if ffn is not None:
            obs = (
                observer(recorder.block_delta, "mixer", recorder.ffn_out_norm, idx)
                if inside
                else observer(recorder.block_norm, recorder.ffn_out_norm, idx, s_ffn)
            )
            hooks.append((family.part(layer, ffn), obs))

        def enter(module, args, kwargs, idx=idx):
            h = args[0] if args else kwargs.get("hidden_states")
            recorder.enter_layer(idx, h if isinstance(h, torch.Tensor) else None)
            if idx == 0 and isinstance(h, torch.Tensor):
                recorder.layer0_input(h)

        enters.append((layer, enter))
    with (
        attention_implementation(model, register() if use_attention else None),
        context_value(ACTIVE_RECORDER, recorder) if use_attention else nullcontext(),
        hooked(forward=hooks, pre_kwargs=enters),
    ):
        try:
            yield recorder
        finally:
            release_scratch()  # the attention blocks' buffers live for one forward only


@contextmanager
def tapped(recorder: Recorder, tap):
    """Add `tap(layer, query, key, value)` to the recorder's taps while inside; removed in `finally`."""
    recorder.taps.append(tap)
    try:
        yield recorder
    finally:
        if tap in recorder.taps:
            recorder.taps.remove(tap)
