"""The mechanism's second forward pass: exactly the tensors the analyses need, nothing more.

The first pass (the probe's compact `Capture`) finds the spike tokens, their channels, the step-up
layer and the sink tokens. `gather` then re-runs the same left-padded batch with extra forward
hooks (installed by `gathering` through `sinkhole.probe.hooks.hooked`, removed in `finally`) and
a `Recorder` tap for post-RoPE q/k, and keeps, with S spike tokens, C spike channels, L layers,
B prompts padded to T tokens:

    embed        (S, D)      embedding output e at the spike tokens (the residual before layer 0)
    attn_out     (L, S, D)   attention block's contribution to the residual (family.attn_out)
    ffn_out      (L, S, D)   FFN block's contribution (family.ffn_out)
    layer_out    (L, S, D)   decoder layer output h_l
    chan         (L, B, T, C) h_l at the spike channels, every token
    ffn_in       (B, T, D)   FFN input at the step-up layer s (what gate/up read: after its norm, if any)
    mlp_chan     (B, T, C)   the MLP's own output at the spike channels at layer s (before any post-norm)
    act_cos      (B, T)      cos(activation input, activation output) at layer s, per token
    act_ratio    (B, T)      ||activation output|| / ||activation input||
    norm_before  (S+O, D)    attention-norm output entering layer s   (spike tokens, then O others)
    norm_after   (S+O, D)    attention-norm output entering layer s+1 (final norm when s is last)
    sink_keys    (L, Ns, Hkv, Dh)  post-RoPE keys of sink tokens
    other_keys   (L, O, Hkv, Dh)   post-RoPE keys of the O sampled other tokens
    other_queries(L, O, Hq, Dh)    their post-RoPE queries

Nothing of size (L, B, T, D) is ever kept.

Pieces a model does not have are None: ffn_in / mlp_chan / act_cos / act_ratio without a separable
SwiGLU FFN (GPT-2's fused MLP, MoE blocks), norm_before / norm_after without a norm feeding the
attention. Layers whose contributions or keys are not measured (a hybrid's SSM layers, blocks
discovery could not split) hold NaN in attn_out / ffn_out / the key arrays.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from sinkhole.probe.batch import forward_kwargs, left_pad, pad_id
from sinkhole.probe.hooks import first_tensor, hooked
from sinkhole.probe.loading import LoadedModel
from sinkhole.probe.recorder import Recorder, recording, tapped


@dataclass
class Plan:
    """Which tokens and channels to gather. Positions are (batch row, padded position)."""

    spikes: list[tuple[int, int]]
    channels: list[int]
    step_up: int
    sinks: list[tuple[int, int]]
    others: list[tuple[int, int]]


@dataclass
class Gathered:
    embed: np.ndarray
    attn_out: np.ndarray
    ffn_out: np.ndarray
    layer_out: np.ndarray
    chan: np.ndarray
    ffn_in: np.ndarray | None
    mlp_chan: np.ndarray | None
    act_cos: np.ndarray | None
    act_ratio: np.ndarray | None
    norm_before: np.ndarray | None
    norm_after: np.ndarray | None
    sink_keys: np.ndarray
    other_keys: np.ndarray
    other_queries: np.ndarray
    activation: str = ""
    valid: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))


def _index(pos: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    if not pos:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    b, t = zip(*pos)
    return torch.tensor(b), torch.tensor(t)


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., N) x (..., N) -> (...) cosine of matching rows, 0 where either is zero."""
    a, b = a.float(), b.float()
    den = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
    return (a * b).sum(-1) / den.clamp_min(1e-30)


@contextmanager
def gathering(lm: LoadedModel, plan: Plan, store: dict, recorder: Recorder):
    """Forward hooks (and a recorder tap) that fill `store`; all removed in `finally`."""
    fam, model = lm.family, lm.model
    layers = fam.decoder_layers(model)
    L, s = len(layers), plan.step_up
    sb, st = _index(plan.spikes)
    ob, ot = _index(plan.others)
    kb, kt = _index(plan.sinks)
    nb, nt = torch.cat([sb, ob]), torch.cat([st, ot])  # spike tokens then others
    ch = torch.tensor(plan.channels, dtype=torch.long)
    store.update(
        attn_out=[None] * L,
        ffn_out=[None] * L,
        layer_out=[None] * L,
        chan=[None] * L,
        sink_keys=[None] * L,
        other_keys=[None] * L,
        other_queries=[None] * L,
    )

    def keep(name, idx=None, scale=1.0):
        def hook(module, inputs, output):
            h = first_tensor(output).detach() * scale  # a branch's factor before the residual add (Granite)
            if idx is None:
                store[name] = h[sb, st].float().cpu()
            else:
                store[name][idx] = h[sb, st].float().cpu()

        return hook

    def layer_hook(idx):
        def hook(module, inputs, output):
            h = first_tensor(output).detach()
            store["layer_out"][idx] = h[sb, st].float().cpu()
            store["chan"][idx] = h[..., ch].float().cpu()

        return hook

    def norm_keep(name):
        def hook(module, inputs, output):
            store[name] = first_tensor(output).detach()[nb, nt].float().cpu()

        return hook

    def ffn_in_hook(module, inputs):  # forward pre-hook on the MLP: its input, after whatever norm precedes it
        store["ffn_in"] = inputs[0].detach().float().cpu()

    def mlp_hook(module, inputs, output):
        store["mlp_chan"] = first_tensor(output).detach()[..., ch].float().cpu()

    def act_hook(module, inputs, output):
        a, b = inputs[0].detach().float(), first_tensor(output).detach().float()
        store["act_cos"] = cosine_rows(a, b).cpu()
        store["act_ratio"] = (
            torch.linalg.vector_norm(b, dim=-1) / torch.linalg.vector_norm(a, dim=-1).clamp_min(1e-30)
        ).cpu()
        store["activation"] = type(module).__name__

    def tap(layer, query, key, value):
        store["sink_keys"][layer] = key[kb, :, kt].detach().float().cpu()  # (Ns, Hkv, Dh)
        store["other_keys"][layer] = key[ob, :, ot].detach().float().cpu()
        store["other_queries"][layer] = query[ob, :, ot].detach().float().cpu()

    step_layer = layers[s]
    hooks = [(fam.part(model, fam.embed), keep("embed"))]
    pre_hooks = []
    if fam.swiglu and fam.act_fn:  # the SwiGLU-specific pieces (None elsewhere)
        mlp = fam.part(step_layer, fam.mlp)
        pre_hooks.append((mlp, ffn_in_hook))
        hooks += [(mlp, mlp_hook), (fam.part(mlp, fam.act_fn), act_hook)]
    if fam.attn_norm and (s + 1 < L or fam.final_norm):
        after = fam.part(layers[s + 1], fam.attn_norm) if s + 1 < L else fam.part(model, fam.final_norm)
        hooks += [(fam.part(step_layer, fam.attn_norm), norm_keep("norm_before")), (after, norm_keep("norm_after"))]
    for idx, layer in enumerate(layers):
        hooks.append((layer, layer_hook(idx)))
        s_mix, s_ffn = fam.scales_of(idx)
        if fam.mixer_out_of(idx):
            hooks.append((fam.part(layer, fam.mixer_out_of(idx)), keep("attn_out", idx, s_mix)))
        if fam.ffn_out_of(idx):
            hooks.append((fam.part(layer, fam.ffn_out_of(idx)), keep("ffn_out", idx, s_ffn)))
    with tapped(recorder, tap), hooked(forward=hooks, pre=pre_hooks):
        yield store


def gather(lm: LoadedModel, seqs: list[list[int]], plan: Plan) -> Gathered:
    """Run the padded batch once with the gathering hooks; return the kept tensors as numpy."""
    ids, valid = left_pad(seqs, pad_id(lm.tokenizer))
    n_layers = len(lm.family.decoder_layers(lm.model))
    rec = Recorder(n_layers, valid, top_k=1)
    store: dict = {}
    dev = lm.device
    with torch.inference_mode(), recording(lm.model, lm.family, rec), gathering(lm, plan, store, rec):
        lm.model(**forward_kwargs(ids, valid, dev))

    def stack(name, like_name=None):
        """Per-layer tensors stacked; a layer without one (not measured there) is NaN. With `like_name`,
        a piece no layer measured is all NaN in that one's shape (a hybrid whose blocks discovery
        could not split still has a residual stream) instead of None."""
        like = next((t for t in store[name] if t is not None), None)
        if like is None and like_name is not None:
            like = next((t for t in store[like_name] if t is not None), None)
        if like is None:
            return None
        return torch.stack([t if t is not None else torch.full_like(like, float("nan")) for t in store[name]]).numpy()

    def opt(name):
        v = store.get(name)
        return v.numpy() if v is not None else None

    return Gathered(
        embed=store["embed"].numpy(),
        attn_out=stack("attn_out", "layer_out"),
        ffn_out=stack("ffn_out", "layer_out"),
        layer_out=stack("layer_out"),
        chan=stack("chan"),
        ffn_in=opt("ffn_in"),
        mlp_chan=opt("mlp_chan"),
        act_cos=opt("act_cos"),
        act_ratio=opt("act_ratio"),
        norm_before=opt("norm_before"),
        norm_after=opt("norm_after"),
        sink_keys=stack("sink_keys"),
        other_keys=stack("other_keys"),
        other_queries=stack("other_queries"),
        activation=store.get("activation", ""),
        valid=valid.numpy(),
    )
