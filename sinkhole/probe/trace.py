"""The traced forward that architecture discovery reads (`sinkhole.models.discovery`), and `family_for`.

Discovery needs to watch a model run: which module calls attention in which layer, and every
decoder layer's and submodule's inputs and outputs. That takes the probe's hook primitives
(`sinkhole.probe.hooks`) and its exact attention, so the forward runs here, in the probe, and
models/ only reads the `Trace` it records (models/ never imports the probe). The trace's attention
is `attention_with_stats`, so the outputs it compares are exact.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager

import torch
import torch.nn as nn

from sinkhole.errors import SinkholeError
from sinkhole.models.discovery import (
    MAX_DEPTH,
    LayerRecord,
    ModuleRecord,
    Trace,
    family_from_trace,
    skeleton,
    text_config,
)
from sinkhole.models.families import Family
from sinkhole.probe.attention import attention_with_stats, sink_logits
from sinkhole.probe.exact_attention import release_scratch
from sinkhole.probe.hooks import attention_implementation, context_value, hooked, register_attention
from sinkhole.probe.recorder import plain_attention

TRACE_NAME = "sinkhole_trace"
TRACE_TOKENS = 5
_STATE: contextvars.ContextVar = contextvars.ContextVar("sinkhole_trace_state", default=None)


def family_for(model: nn.Module) -> Family:
    """The family of a loaded *ForCausalLM model: discovered from one traced forward, overrides applied."""
    sk = skeleton(model)
    st = Trace()
    try:
        with torch.inference_mode(), tracing(model, sk.layers, st) as switched:
            model(input_ids=trace_ids(model), use_cache=False)
    except SinkholeError:
        raise
    except Exception as err:  # noqa: BLE001 - any model failure becomes one line
        msg = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise SinkholeError(
            f"{sk.model_type}: a {TRACE_TOKENS}-token test forward failed ({type(err).__name__}: {msg})"
        ) from None
    return family_from_trace(model, sk, st, switched)


def trace_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The attention function of the traced forward: exact attention, noting which module called it."""
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    if query.dim() != 4 or (attention_mask is None and not getattr(module, "is_causal", True)):
        # not causal attention over tokens (Inkling-2's attention over earlier blocks' states)
        return plain_attention(query, key, value, attention_mask, scaling), None
    st = _STATE.get()
    if st is not None and st.layer is not None:
        st.layers[st.layer].calls.append(module)
    out = attention_with_stats(
        query,
        key,
        value,
        attention_mask,
        scaling,
        softcap=kwargs.get("softcap"),
        sinks=sink_logits(kwargs),
        causal=getattr(module, "is_causal", True),
    )[0]
    return out, None


def _tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    return None


@contextmanager
def tracing(model: nn.Module, layers: nn.ModuleList, st: Trace):
    """Record the forward run inside into `st`: hooks on every layer and on its submodules (two levels
    deep), the model switched to `trace_attention` where it can switch; all undone in `finally`."""
    pre_kwargs, forward = [], []
    for idx, layer in enumerate(layers):
        rec = st.layers.setdefault(idx, LayerRecord())

        def pre(m, args, kwargs, idx=idx, rec=rec):
            st.layer = idx
            rec.h_in = _tensor(args[0] if args else kwargs.get("hidden_states"))

        def post(m, args, out, rec=rec):
            rec.h_out = _tensor(out)

        pre_kwargs.append((layer, pre))
        forward.append((layer, post))
        for name, mod in layer.named_modules():
            if not name or name.count(".") >= MAX_DEPTH:
                continue

            def mpre(m, args, kwargs, name=name, rec=rec):
                st.clock += 1
                ins = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
                rec.mods[name] = ModuleRecord(st.clock, type(m).__name__, ins)

            def mpost(m, args, out, name=name, rec=rec):
                st.clock += 1
                r = rec.mods.get(name)
                t = _tensor(out)
                if r is not None and t is not None:
                    r.out, r.out_ref, r.end = t.detach().clone(), t, st.clock

            pre_kwargs.append((mod, mpre))
            forward.append((mod, mpost))
    trace = register_attention(TRACE_NAME, trace_attention)
    # optional: a model that cannot switch bypasses the interface and is traced without it
    with (
        context_value(_STATE, st),
        attention_implementation(model, trace, optional=True),
        hooked(forward=forward, pre_kwargs=pre_kwargs),
    ):
        try:
            yield getattr(model.config, "_attn_implementation", None) == trace
        finally:
            release_scratch()  # the traced attention's block buffers (sinkhole.probe.exact_attention)


def trace_ids(model: nn.Module) -> torch.Tensor:
    """A few token ids every vocabulary has (1..TRACE_TOKENS), on the embedding's device."""
    vocab = getattr(text_config(model), "vocab_size", None) or 100
    emb = model.get_input_embeddings()
    dev = emb.weight.device if emb is not None and hasattr(emb, "weight") else next(model.parameters()).device
    return (torch.arange(TRACE_TOKENS) % max(2, vocab - 1) + 1).clamp(max=vocab - 1)[None].to(dev)
