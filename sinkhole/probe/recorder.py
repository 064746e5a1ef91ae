"""The recorder: what one forward pass accumulates, and the context manager that wires it in.

`recording(model, family, recorder)` is the only place hooks are installed: it switches the model
to the "sinkhole" attention function, makes `recorder` the active one, adds forward hooks on the
decoder layers and on the modules whose outputs are added to the residual, and undoes all of it
in `finally`, whatever happens inside.

Extensions (the mechanism analyses, for example) add `taps`: callables
`tap(layer, query, key, value)` called once per layer with the post-RoPE tensors, so that they can
keep what they need (a few keys, say) without another attention implementation.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from sinkhole.models.families import Family
from sinkhole.probe.attention import ACTIVE_RECORDER, DEFAULT_BLOCK_BYTES, attention_with_stats, register


def residual_stats(h: torch.Tensor, k: int, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token L2 norm and top-k channels by |value| of a residual-shaped tensor.

    h: (B, T, D). Returns norm (B, T) float32, channels (B, T, k) int32 (largest |h| first), and the
    signed values (B, T, k) float32 at those channels. Long inputs go in token chunks so that the
    float32 copy stays small next to the forward's own activations (same numbers, token by token).
    """
    if h.shape[1] > chunk:
        parts = [residual_stats(h[:, i:i + chunk], k, chunk) for i in range(0, h.shape[1], chunk)]
        return tuple(torch.cat(p, dim=1) for p in zip(*parts))
    hf = h.float()
    norm = torch.linalg.vector_norm(hf, dim=-1)
    top = torch.topk(hf.abs(), k=min(k, hf.shape[-1]), dim=-1)
    values = torch.gather(hf, -1, top.indices)
    return norm, top.indices.to(torch.int32), values


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _observer(fn, *args):
    """A forward hook that calls fn(*args, output) and returns None (a returned value would replace the output)."""

    def hook(module, inputs, output):
        fn(*args, _first(output))

    return hook


class Recorder:
    """Accumulates one batch's statistics on the CPU. B sequences padded to T tokens on the left.

    query_valid: (B, T) bool, False on padding. keep_maps: keep full attention probabilities.
    """

    def __init__(self, n_layers: int, query_valid: torch.Tensor, top_k: int = 8,
                 keep_maps: bool = False, block_bytes: int = DEFAULT_BLOCK_BYTES, progress=None):
        B, T = query_valid.shape
        self.n_layers, self.top_k = n_layers, top_k
        self.query_valid = query_valid
        self.all_valid = bool(query_valid.all())  # no padding: skip the per-row validity multiply
        self.keep_maps, self.block_bytes, self.progress = keep_maps, block_bytes, progress
        self.attn_colsum: list[torch.Tensor | None] = [None] * n_layers  # each (B, H, T)
        self.attn_maps: list[torch.Tensor | None] = [None] * n_layers  # each (B, H, T, T) f16
        # each (B, H) float32: attention probability the learned sink logit takes (gpt-oss), summed
        # over valid query rows; None for layers without learned sinks
        self.sink_mass: list[torch.Tensor | None] = [None] * n_layers
        self.resid_norm = torch.zeros(n_layers, B, T)
        self.resid_top_channels = torch.zeros(n_layers, B, T, top_k, dtype=torch.int32)
        self.resid_top_values = torch.zeros(n_layers, B, T, top_k)
        self.attn_out_norm = torch.zeros(n_layers, B, T)
        self.ffn_out_norm = torch.zeros(n_layers, B, T)
        self.embed_norm = torch.zeros(B, T)
        self.attn_calls = 0
        self.resid_calls = 0
        self.saturated = False  # some |h| reached the largest finite value of the model's dtype
        self.taps: list = []

    # --- called from the attention function -------------------------------------------------
    def attention(self, layer, query, key, value, mask, scaling, softcap=None, sinks=None, causal=True):
        if layer is None:  # models without layer_idx: layers run in order
            layer = self.attn_calls % self.n_layers
        self.attn_calls += 1
        for tap in self.taps:
            tap(layer, query, key, value)
        valid = self.query_valid[:, -query.shape[2]:]
        valid = None if self.all_valid else valid.to(query.device)
        out, colsum, probs, sink_mass = attention_with_stats(
            query, key, value, mask, scaling, softcap=softcap, sinks=sinks, query_valid=valid,
            block_bytes=self.block_bytes, keep_probs=self.keep_maps, causal=causal,
        )
        self.attn_colsum[layer] = colsum.cpu()
        self.sink_mass[layer] = sink_mass.cpu() if sink_mass is not None else None
        if probs is not None:
            self.attn_maps[layer] = probs.cpu()
        return out

    # --- called from forward hooks ----------------------------------------------------------
    def residual(self, layer: int, h: torch.Tensor) -> None:
        norm, ch, val = residual_stats(h, self.top_k)
        if h.is_floating_point() and float(val[..., 0].abs().max()) >= torch.finfo(h.dtype).max:
            self.saturated = True
        self.resid_norm[layer], self.resid_top_channels[layer], self.resid_top_values[layer] = (
            norm.cpu(), ch.cpu(), val.cpu(),
        )
        self.resid_calls += 1
        if self.progress is not None:
            self.progress(layer)

    def block_norm(self, store: torch.Tensor, layer: int, out: torch.Tensor) -> None:
        store[layer] = torch.linalg.vector_norm(out.float(), dim=-1).cpu()

    def embedding(self, out: torch.Tensor) -> None:
        self.embed_norm[:] = torch.linalg.vector_norm(out.float(), dim=-1).cpu()

    def overflowed(self) -> bool:
        """True when a statistic is inf/NaN or the residual hit its dtype's largest value (float16: 65504)."""
        if self.saturated:
            return True
        parts = [self.resid_norm, self.attn_out_norm, self.ffn_out_norm, self.embed_norm]
        parts += [c for c in self.attn_colsum if c is not None]
        return any(not torch.isfinite(p).all() for p in parts)


@contextmanager
def recording(model: torch.nn.Module, family: Family, recorder: Recorder, use_attention: bool = True):
    """Install the recorder's hooks (and the "sinkhole" attention) for the duration of the block."""
    handles = []
    token = None
    previous = getattr(model.config, "_attn_implementation", None)
    try:
        if use_attention:
            model.set_attn_implementation(register())
            token = ACTIVE_RECORDER.set(recorder)
        layers = family.decoder_layers(model)
        hooks = [(family.part(model, family.embed), _observer(recorder.embedding))]
        for idx, layer in enumerate(layers):
            hooks += [
                (layer, _observer(recorder.residual, idx)),
                (family.part(layer, family.attn_out), _observer(recorder.block_norm, recorder.attn_out_norm, idx)),
                (family.part(layer, family.ffn_out), _observer(recorder.block_norm, recorder.ffn_out_norm, idx)),
            ]
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield recorder
    finally:
        for h in handles:
            h.remove()
        if token is not None:
            ACTIVE_RECORDER.reset(token)
        if use_attention and previous is not None:
            model.set_attn_implementation(previous)
