"""The one way sinkhole changes a model for a while: context managers that undo in `finally`.

Every measurement or intervention that needs more than a plain forward (the probe's recorder, the
mechanism's gathering pass, the vocabulary sweep's peak norms, calibration statistics, channel
edits, the sink mask, fake quantization) is built on these few primitives, so each change is
installed the same way and removed whatever happens inside the block (TransformerLens's
`HookPoint` idea, without wrapping the model):

    hooked(forward=..., pre=..., pre_kwargs=...)   forward / pre-forward hooks, {module: fn} or [(module, fn)]
    swapped(model, {name: make})                   a submodule replaced by make(original) (fake quantization)
    attention_implementation(model, name)          transformers' attention function switched
    context_value(var, value)                      a ContextVar set (state an attention function reads)

Hook functions follow torch's signatures: forward `fn(module, inputs, output)` (returning a value
replaces the output), pre-forward `fn(module, args)` or, under `pre_kwargs`, `fn(module, args, kwargs)`.
A list of pairs allows several hooks on one module; they run in list order.
`first_tensor` takes the hidden states out of a module's output (decoder layers return tuples in
some transformers versions and a tensor in others).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch

Hooks = Mapping[torch.nn.Module, Callable] | Iterable[tuple[torch.nn.Module, Callable]]


def first_tensor(output):
    """The hidden states of a module output: the first element of a tuple / list, else the output itself."""
    return output[0] if isinstance(output, (tuple, list)) else output


def observer(fn: Callable, *args) -> Callable:
    """A forward hook that calls fn(*args, hidden states) and returns None (the output is left as it is)."""

    def hook(module, inputs, output):
        fn(*args, first_tensor(output))

    return hook


def _pairs(hooks: Hooks) -> list[tuple[torch.nn.Module, Callable]]:
    return list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks)


@contextmanager
def hooked(forward: Hooks = (), pre: Hooks = (), pre_kwargs: Hooks = ()) -> Iterator[None]:
    """Register forward hooks, pre-forward hooks and pre-forward hooks with kwargs; all removed in `finally`."""
    handles = []
    try:
        for module, fn in _pairs(pre_kwargs):
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
        for module, fn in _pairs(pre):
            handles.append(module.register_forward_pre_hook(fn))
        for module, fn in _pairs(forward):
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for handle in reversed(handles):
            handle.remove()


@contextmanager
def swapped(model: torch.nn.Module, replacements: Mapping[str, Callable]) -> Iterator[torch.nn.Module]:
    """Replace each named submodule by make(original) while inside; the originals are put back in `finally`.

    `make` may raise (a wrong module type, say): what was swapped before it is restored all the same.
    """
    done: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    try:
        for name, make in replacements.items():
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            original = getattr(parent, child)
            setattr(parent, child, make(original))
            done.append((parent, child, original))
        yield model
    finally:
        for parent, child, original in reversed(done):
            setattr(parent, child, original)


@contextmanager
def attention_implementation(model, name: str | None, optional: bool = False) -> Iterator[None]:
    """Switch the model's attention function to `name` (a registered one) while inside; None changes nothing.

    The previous implementation is restored in `finally` (when the config names one). `optional`: a
    model that refuses the switch (ValueError, ImportError, AttributeError) runs unchanged.
    """
    previous = getattr(model.config, "_attn_implementation", None)
    changed = name is not None
    try:
        if changed:
            try:
                model.set_attn_implementation(name)
            except (ValueError, ImportError, AttributeError):
                if not optional:
                    raise
                changed = False
        yield
    finally:
        if changed and previous is not None:
            model.set_attn_implementation(previous)


def register_attention(name: str, forward: Callable, mask: Callable | None = None) -> str:
    """Register `forward` as transformers attention function `name` (idempotent) with the mask
    function it reads (default `sdpa_mask`: a boolean mask, or None where plain causal suffices);
    returns `name`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, forward)
    AttentionMaskInterface.register(name, mask or sdpa_mask)
    return name


@contextmanager
def registered_attention(model, name: str, forward: Callable, mask: Callable | None = None) -> Iterator:
    """Run `model` with attention function `forward` (registered as `name`) while inside; undone in `finally`."""
    with attention_implementation(model, register_attention(name, forward, mask)):
        yield model


@contextmanager
def context_value(var: contextvars.ContextVar, value) -> Iterator[None]:
    """Set a ContextVar while inside (read by an attention function during the forward); reset in `finally`."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)
