"""vLLM model classes with sinks + window: each is a vLLM model class whose `__init__` ends with
`sinkhole.vllm.backend.install`, registered under the name `Sinkhole<Architecture>` through
`vllm.ModelRegistry` (sinkhole.vllm.plugin). SinkAwareLLM selects one with
`hf_overrides={"architectures": ["Sinkhole<Architecture>"], "sinkhole": {...}}`; the settings
travel inside the model's config to every process that builds the model.
"""

from __future__ import annotations

import importlib

from sinkhole.errors import SinkholeError

# vLLM architecture -> the module that defines it. Llama-family attention (RoPE, NeoX style, a
# `rotary_emb` beside each `attn`); Llama is what the tests run (SmolLM2).
BASES = {
    "LlamaForCausalLM": "vllm.model_executor.models.llama",
    "MistralForCausalLM": "vllm.model_executor.models.mistral",
    "Qwen2ForCausalLM": "vllm.model_executor.models.qwen2",
    "Qwen3ForCausalLM": "vllm.model_executor.models.qwen3",
}
PREFIX = "Sinkhole"
CONFIG_KEY = "sinkhole"


def settings_of(hf_config) -> tuple[int, tuple[int, ...], int]:
    """(window, pinned positions, pin_blocks) from a model config carrying SinkAwareLLM's overrides."""
    st = getattr(hf_config, CONFIG_KEY, None)
    if not isinstance(st, dict) or "window" not in st or "pinned" not in st:
        raise SinkholeError(
            f"a {PREFIX}* architecture needs the '{CONFIG_KEY}' settings: load it through SinkAwareLLM"
        )
    return int(st["window"]), tuple(int(p) for p in st["pinned"]), int(st.get("pin_blocks", 0))


def _make(base_name: str) -> type:
    base = getattr(importlib.import_module(BASES[base_name]), base_name)

    def __init__(self, *, vllm_config, prefix: str = "", **kwargs):
        base.__init__(self, vllm_config=vllm_config, prefix=prefix, **kwargs)
        from sinkhole.vllm.backend import install

        install(self, *settings_of(vllm_config.model_config.hf_config))

    return type(PREFIX + base_name, (base,), {"__init__": __init__, "__module__": __name__})


def __getattr__(name: str):
    """`SinkholeLlamaForCausalLM` etc., built on first access (vLLM imports them lazily by name)."""
    if name.startswith(PREFIX) and name[len(PREFIX) :] in BASES:
        cls = _make(name[len(PREFIX) :])
        globals()[name] = cls
        return cls
    raise AttributeError(name)
