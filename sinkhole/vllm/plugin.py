"""vLLM general plugin (entry point `vllm.general_plugins: sinkhole`): registers the Sinkhole*
architectures in every vLLM process (the engine core and workers import their models by name).
Cheap and inert for any model that does not ask for a Sinkhole* architecture."""

from __future__ import annotations


def register() -> None:
    from vllm import ModelRegistry

    from sinkhole.vllm.models import BASES, PREFIX

    for base in BASES:
        if PREFIX + base not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(PREFIX + base, f"sinkhole.vllm.models:{PREFIX}{base}")
