"""The quantization backends sinkhole writes hints for: one registry, name -> `Backend`.

A backend is a config builder (statistics or profile -> the library's own config format, with notes and
evidence), a writer (config -> files) and what it needs from the run. Builders and writers are lazy
"module:function" targets, as in lm-evaluation-harness' registry, so that `sinkhole quant --help` and option
checks import no torch. Adding a backend is one `register(Backend(...))` call; the CLI's choices, the option
checks and the "did you mean" error all read this table.

Builder contract: `build(ctx: HintContext) -> (config, notes, basis)`; `basis` entries are merged into the
hints' evidence. Writer contract: `write(hints, path) -> [paths written]`, through the checked writer.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from sinkhole.errors import SinkholeError, did_you_mean


@dataclass(frozen=True)
class Backend:
    name: str
    build: str  # "module:function" building (config, notes, basis) from a HintContext
    write: str  # "module:function" writing the config to a path
    summary: str  # one line for --help and docs
    needs_stats: bool = False  # the config holds calibration tensors: a profile alone cannot give it
    needs_alpha: bool = False  # the config carries a SmoothQuant strength (tuned unless given)
    needs_out: bool = False  # the config is binary: it cannot be printed

    def builder(self):
        return _resolve(self.build)

    def writer(self):
        return _resolve(self.write)


def _resolve(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    if backend.name in BACKENDS:
        raise ValueError(f"quantization backend {backend.name!r} is registered twice")
    BACKENDS[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    """The registered backend called `name`, or a one-line error with the closest name."""
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise SinkholeError(
            f"unknown backend '{name}'{did_you_mean(str(name), BACKENDS)}: use one of {', '.join(BACKENDS)}"
        ) from None


_H = "sinkhole.quant.hints"
register(Backend("bitsandbytes", f"{_H}:bitsandbytes_config", f"{_H}:write_json", "BitsAndBytesConfig kwargs (8-bit)"))
register(
    Backend(
        "llm-compressor",
        f"{_H}:llm_compressor_recipe",
        f"{_H}:write_recipe",
        "W8A8 recipe: SmoothQuantModifier + QuantizationModifier (YAML, or JSON for a .json path)",
        needs_alpha=True,
    )
)
register(Backend("torchao", f"{_H}:torchao_config", f"{_H}:write_json", "TorchAoConfig dict (int8 dynamic)"))
register(
    Backend(
        "smoothquant",
        f"{_H}:smoothquant_scales",
        f"{_H}:write_scales",
        "act_scales for smooth_lm (torch .pt plus a JSON sidecar)",
        needs_stats=True,
        needs_alpha=True,
        needs_out=True,
    )
)
register(Backend("prefix", f"{_H}:prefix_config", f"{_H}:write_json", "tokens to prefill in float (PrefixQuant)"))
