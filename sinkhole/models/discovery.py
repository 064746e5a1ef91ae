"""Discover a decoder's layout from the loaded model itself (no per-family table).

1. Decoder layers: the ModuleList whose length is the config's layer count (the largest by
   parameters when several are), wherever it sits (`model.layers`, `transformer.h`,
   `gpt_neox.layers`, `model.decoder.layers`, ...). Embedding: `get_input_embeddings()`. Final
   norm: a norm beside the layer list (`skeleton`).
2. One traced forward of a few tokens (`sinkhole.probe.trace`, which runs the model with the probe's
   hooks and exact attention) records, into a `Trace`, which module calls attention in which layer
   (that module is the layer's attention; layers that never call it are linear-attention / SSM /
   conv layers of a hybrid), and each layer's input, output and its submodules' inputs and outputs.
3. Residual structure, per layer (`family_from_trace`): the pair of submodules (a, f) with
   h_out = h_in + out(a) + out(f) (shallowest first); a is the attention (pre-norm, parallel) or a
   norm after it (sandwich, post-norm). Sandwich vs post-norm: whether a norm feeds the attention.
   Parallel: the FFN's input does not depend on h_in + out(a). "inside": the blocks add the
   residual themselves (BLOOM, BERT-style post-LN), found from f's inputs holding out(a). Nothing
   found: block norms are NaN.
4. SwiGLU pieces (gate/up/down/act) and q/k projections by their conventional names inside the
   FFN / attention; absent ones are None (analyses that need them say "not applicable").

This module only reads what the trace recorded (it runs nothing), so models/ never imports the probe.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from sinkhole.errors import SinkholeError
from sinkhole.models.families import ATTENTION, FAMILIES, OVERRIDES, Family

MAX_DEPTH = 2  # submodules of a decoder layer considered as residual contributors: a.b at most


@dataclass
class ModuleRecord:
    """One submodule's call in the traced forward: when it started and ended, its inputs and output."""

    start: int
    cls: str
    inputs: list = field(default_factory=list)
    out: torch.Tensor | None = None  # a copy: some layers add to a block's output in place (Falcon)
    out_ref: torch.Tensor | None = None  # the object itself, to see which module reads it
    end: int = -1


@dataclass
class LayerRecord:
    """One decoder layer in the traced forward."""

    h_in: torch.Tensor | None = None
    h_out: torch.Tensor | None = None
    mods: dict = field(default_factory=dict)  # relative name -> ModuleRecord
    calls: list = field(default_factory=list)  # modules that called the attention interface


@dataclass
class Trace:
    """What the traced forward recorded: the running layer and clock while it runs, then every layer."""

    layer: int | None = None
    clock: int = 0
    layers: dict[int, LayerRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class Skeleton:
    """Where the decoder blocks, the embedding and the final norm sit (found without running the model)."""

    model_type: str
    layers_path: str
    layers: nn.ModuleList
    embed: str
    final_norm: str | None


def text_config(model: nn.Module):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted path, ModuleList) of the decoder blocks."""
    n = getattr(text_config(model), "num_hidden_layers", None)
    best = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0 or not name:
            continue
        if not all(len(list(m.children())) > 0 for m in mod):  # blocks have parts; lists of Linears do not
            continue
        size = sum(p.numel() for p in mod.parameters())
        key = (len(mod) == n, size)
        if best is None or key > best[0]:
            best = (key, name, mod)
    if best is None:
        mt = getattr(model.config, "model_type", type(model).__name__)
        raise SinkholeError(
            f"unsupported architecture '{mt}': no list of decoder blocks found in {type(model).__name__}"
        )
    return best[1], best[2]


def _name_of(root: nn.Module, target: nn.Module) -> str | None:
    for name, mod in root.named_modules():
        if mod is target:
            return name
    return None


def _is_norm(cls: str) -> bool:
    return "norm" in cls.lower()


def _skip(cls: str) -> bool:
    return cls in ("Dropout", "Identity") or "Dropout" in cls


def _fits(x: torch.Tensor | None, like: torch.Tensor) -> bool:
    """x has like's elements in residual layout ((B, T, D), or flattened to (B*T, D) as OPT's FFN does)."""
    return x is not None and x.shape[-1:] == like.shape[-1:] and x.numel() == like.numel()


def _close(x: torch.Tensor | None, y: torch.Tensor | None, tol: float) -> bool:
    if x is None or y is None or not _fits(x, y):
        return False
    x, y = x.float().reshape(y.shape), y.float()
    return float(torch.linalg.vector_norm(x - y)) <= tol * (float(torch.linalg.vector_norm(y)) + 1e-6)


@dataclass
class LayerParts:
    kind: str
    attn: str | None = None
    mixer_out: str | None = None
    ffn_out: str | None = None
    attn_norm: str | None = None
    ffn_norm: str | None = None
    mlp: str | None = None
    style: str = "unknown"
    mixer_scale: float = 1.0
    ffn_scale: float = 1.0


def _parts(rec: LayerRecord, layer: nn.Module, kind: str, tol: float) -> LayerParts:
    names = {id(m): n for n, m in layer.named_modules()}
    attn = next((names[id(m)] for m in rec.calls if id(m) in names), None)
    h_in, h_out = rec.h_in, rec.h_out
    out = LayerParts(kind=kind, attn=attn)
    if h_in is None or h_out is None:
        return out
    cands = [(n, r) for n, r in rec.mods.items() if _fits(r.out, h_out) and not _skip(r.cls)]
    cands.sort(key=lambda c: (c[0].count("."), c[1].start))
    delta = h_out.float() - h_in.float()
    pairs = [
        (na, ra, nf, rf)
        for na, ra in cands
        for nf, rf in cands  # a starts first, neither inside the other
        if rf.start > ra.start and not nf.startswith(na + ".") and not na.startswith(nf + ".")
    ]
    found, scales = None, (1.0, 1.0)
    for na, ra, nf, rf in pairs:  # sequential or parallel: h_out = h_in + out(a) + out(f)
        if _close(ra.out.float().reshape(delta.shape) + rf.out.float().reshape(delta.shape), delta, tol):
            found = (na, nf, "added")
            break
    if found is None:  # the blocks add the residual themselves: f reads out(a), out(f) = h_out
        for na, ra in cands:
            if not any(t is h_in for t in ra.inputs):
                continue
            for nf, rf in cands:
                if rf.start > ra.end and any(t is ra.out_ref for t in rf.inputs) and _close(rf.out, h_out, tol):
                    found = (na, nf, "inside")
                    break
            if found:
                break
    if (
        found is None
    ):  # scaled residual branches (Granite's residual_multiplier): h_out = h_in + s_a out(a) + s_f out(f)
        for na, ra, nf, rf in pairs:
            fit = _scaled_fit(ra.out.float().reshape(delta.shape), rf.out.float().reshape(delta.shape), delta, tol)
            if fit is not None:
                found, scales = (na, nf, "added"), fit
                break
    if found is None:
        for na, ra in cands:  # a single mixer and no FFN (pure SSM blocks)
            if _close(ra.out, delta, tol):
                found = (na, None, "added")
                break
    if found is None:
        return out
    na, nf, how = found
    out.mixer_out, out.ffn_out = na, nf
    out.mixer_scale, out.ffn_scale = scales
    a_rec = rec.mods[na]
    norms = [(n, r) for n, r in rec.mods.items() if _is_norm(r.cls) and r.out is not None and n.count(".") == 0]

    def feeds(r: ModuleRecord, target: ModuleRecord, exact: bool) -> bool:
        if exact:
            return any(t is r.out_ref for t in target.inputs)
        return any(_close(r.out, t, tol) for t in target.inputs)

    def feeding(pool, target: ModuleRecord) -> str | None:
        # the norm whose output object the target reads; else the last one whose output equals its input
        # (freshly initialised norms of the same input are equal, so identity decides first)
        for exact in (True, False):
            hits = [n for n, r in pool if r.end <= target.start and feeds(r, target, exact)]
            if hits:
                return hits[-1]
        return None

    first = rec.mods.get(attn) if attn in rec.mods else a_rec
    top_attn = attn.split(".")[0] if attn else na.split(".")[0]
    first = rec.mods.get(top_attn, first)
    out.attn_norm = feeding(norms, first)
    if nf is not None:
        f_rec = rec.mods[nf]
        if _is_norm(f_rec.cls):  # sandwich / post: the FFN is what feeds the post-FFN norm
            mlp = next(
                (
                    n
                    for n, r in rec.mods.items()
                    if n.count(".") == 0
                    and not _is_norm(r.cls)
                    and r.out is not None
                    and r.end <= f_rec.start
                    and r.start > a_rec.end
                    and (feeds(r, f_rec, True) or feeds(r, f_rec, False))
                ),
                None,
            )
        else:
            mlp = nf.split(".")[0] if nf.count(".") and not _is_norm(rec.mods.get(nf.split(".")[0], f_rec).cls) else nf
        out.mlp = mlp
        m_rec = rec.mods.get(mlp) if mlp else None
        if m_rec is not None:
            a_out = a_rec.out.float().reshape(h_in.shape) * out.mixer_scale
            h_mid = h_in.float() + (a_out if how == "added" else a_out - h_in.float())
            # sequential when something after the attention block reads h_mid (parallel blocks have none)
            reads_mid = [
                (n, r)
                for n, r in rec.mods.items()
                if r.start > a_rec.end and r.start <= m_rec.start and any(_close(t, h_mid, tol) for t in r.inputs)
            ]
            sequential = bool(reads_mid) or how == "inside"
            out.ffn_norm = feeding([(n, r) for n, r in norms if n not in (na, nf)], m_rec) or next(
                (n for n, r in reads_mid if _is_norm(r.cls) and n.count(".") == 0), None
            )
        else:
            sequential = True
        if how == "inside":
            out.style = "inside"
        elif not sequential:
            out.style = "parallel"
        elif _is_norm(a_rec.cls):
            out.style = "sandwich" if out.attn_norm else "post"
        else:
            out.style = "pre" if out.attn_norm else "unknown"
    return out


def _other_kind(config_type, layer: nn.Module, mixer: str | None) -> str:
    """Kind of a layer that never called attention: the config's name for it when that is not an
    attention kind ("linear_attention", "mamba", "conv"), else its token mixer's class name."""
    t = str(config_type) if config_type is not None else ""
    if t and ("linear" in t or "attention" not in t):
        return t
    return type(layer.get_submodule(mixer.split(".")[0])).__name__ if mixer else "non_attention"


def _scaled_fit(a: torch.Tensor, f: torch.Tensor, delta: torch.Tensor, tol: float) -> tuple[float, float] | None:
    """(s_a, s_f) with delta = s_a a + s_f f by least squares, when that fits within tol (else None)."""
    a, f, d = a.flatten().double(), f.flatten().double(), delta.flatten().double()
    gram = torch.stack([torch.stack([a @ a, a @ f]), torch.stack([a @ f, f @ f])])
    if float(torch.linalg.det(gram)) <= 1e-9 * float(a @ a) * float(f @ f):  # (nearly) parallel: no unique fit
        return None
    sa, sf = torch.linalg.solve(gram, torch.stack([a @ d, f @ d])).tolist()
    if min(abs(sa), abs(sf)) < 1e-6 or not _close((sa * a + sf * f).float(), d.float(), tol):
        return None
    return sa, sf


def _child(mod: nn.Module | None, *names: str) -> str | None:
    if mod is None:
        return None
    kids = dict(mod.named_children())
    return next((n for n in names if n in kids), None)


def skeleton(model: nn.Module) -> Skeleton:
    """The decoder blocks, the embedding and the final norm of a *ForCausalLM model, found by structure."""
    mt = getattr(model.config, "model_type", "") or type(model).__name__
    layers_path, layers = find_layers(model)
    emb = model.get_input_embeddings()
    embed = _name_of(model, emb) if emb is not None else None
    if embed is None:
        raise SinkholeError(f"unsupported architecture '{mt}': no input embedding found")
    parent_path = layers_path.rpartition(".")[0]
    parent = model.get_submodule(parent_path) if parent_path else model
    final = [n for n, m in parent.named_children() if _is_norm(type(m).__name__)]
    final_norm = f"{parent_path}.{final[-1]}".lstrip(".") if final else None
    return Skeleton(mt, layers_path, layers, embed, final_norm)


def family_from_trace(model: nn.Module, sk: Skeleton, st: Trace, switched: bool) -> Family:
    """The Family that the traced forward `st` shows (see the module docstring), overrides applied."""
    layers = sk.layers
    dtype = next(model.parameters()).dtype
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    called = {i for i, r in st.layers.items() if r.calls}
    types = getattr(text_config(model), "layer_types", None)
    types = list(types) if isinstance(types, (list, tuple)) and len(types) == len(layers) else None
    parts = []
    for i, layer in enumerate(layers):
        p = _parts(st.layers.get(i, LayerRecord()), layer, ATTENTION, tol)
        if called and i not in called:  # a hybrid's layer whose token mixer is not attention
            p.kind = _other_kind(types[i] if types else None, layer, p.mixer_out)
        parts.append(p)
    kinds = [p.kind for p in parts]
    ref = next((p for p in parts if p.kind == ATTENTION and p.mixer_out), parts[0])
    styles = {p.style for p in parts if p.kind == ATTENTION}
    style = ref.style if len(styles) == 1 else "/".join(sorted(styles))
    ref_layer = layers[parts.index(ref)]
    attn_mod = ref_layer.get_submodule(ref.attn) if ref.attn else None
    mlp_mod = ref_layer.get_submodule(ref.mlp) if ref.mlp else None
    swiglu = all(isinstance(getattr(mlp_mod, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj"))
    notes = []
    if not called:
        notes.append("attention never called transformers' attention interface: eager fallback")
    if any(p.mixer_out is None for p in parts):
        notes.append("residual contributions not identified in some layers (their block norms are NaN)")
    name = FAMILIES[sk.model_type].name if sk.model_type in FAMILIES else sk.model_type
    per_layer = max((len(r.calls) for r in st.layers.values()), default=1)
    repeats = any(len(r.calls) != len({id(m) for m in r.calls}) for r in st.layers.values())
    fam = Family(
        name=name,
        norm_style=style,
        layers=sk.layers_path,
        final_norm=sk.final_norm,
        embed=sk.embed,
        attn=ref.attn or "",
        attn_norm=ref.attn_norm,
        attn_out=ref.mixer_out,
        ffn_norm=ref.ffn_norm,
        mlp=ref.mlp,
        ffn_out=ref.ffn_out,
        gate_proj="gate_proj" if swiglu else None,
        up_proj="up_proj" if swiglu else None,
        down_proj="down_proj" if swiglu else None,
        act_fn=_child(mlp_mod, "act_fn", "act", "activation_fn") if swiglu else None,
        q_proj=_child(attn_mod, "q_proj"),
        k_proj=_child(attn_mod, "k_proj"),
        discovery="auto",
        layer_kinds=tuple(kinds),
        mixer_outs=tuple(p.mixer_out for p in parts),
        mixer_scales=tuple(p.mixer_scale for p in parts),
        ffn_scales=tuple(p.ffn_scale for p in parts),
        ffn_outs=tuple(p.ffn_out for p in parts),
        uses_interface=bool(called) and switched,
        notes=tuple(notes),
        attn_per_layer=max(per_layer, 1),
        attn_repeats=repeats,
    )
    over = OVERRIDES.get(sk.model_type)
    return replace(fam, **over, discovery=f"override:{sk.model_type}") if over else fam
