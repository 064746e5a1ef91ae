"""What SinkAwareLLM pins and keeps, resolved and checked before vLLM starts (no vLLM import here).

Pinned positions come from a profile (`SinkProfile.pinned_slots` positions, its sink positions
first: `sinkhole profile` output, a shipped name, or "detect" to run SinkDetector on the model) or
from `n_sink` (positions 0 .. n_sink - 1, StreamingLLM's default of 4 when neither is given).
`pin_blocks` is how many blocks holding those positions stay pinned in vLLM's prefix cache after
their last request (only with enable_prefix_caching=True; sinkhole.vllm.spec).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sinkhole.cache.sink_cache import DEFAULT_WINDOW  # the engine keeps what a SinkCache keeps
from sinkhole.errors import SinkholeError

DEFAULT_N_SINK = 4

DEFAULT_PIN_BLOCKS = 8  # distinct sink blocks (e.g. system prompts' first blocks) kept pinned
DETECT_PROMPTS = 32  # prompts SinkDetector runs for profile="detect": a few seconds on SmolLM2


@dataclass(frozen=True)
class SinkSettings:
    model: str  # what vLLM loads: a directory or hub id
    architecture: str  # the model's own vLLM architecture
    window: int  # recent tokens each query attends to, itself included
    pinned: tuple[int, ...]  # absolute positions kept as sinks
    pin_blocks: int = DEFAULT_PIN_BLOCKS  # sink blocks pinned in the prefix cache past their requests

    def hf_overrides(self) -> dict:
        from sinkhole.vllm.models import CONFIG_KEY, PREFIX

        return {
            "architectures": [PREFIX + self.architecture],
            CONFIG_KEY: {"window": self.window, "pinned": list(self.pinned), "pin_blocks": self.pin_blocks},
        }


def model_path(model) -> tuple[str, str | None, str]:
    """(path vLLM loads, weights id or None, display name) for a sinkhole name, directory or hub id.

    A bundled name ('smollm2-135m') is converted once from its GGUF into sinkhole's cache
    (sinkhole.models), which is the directory vLLM then reads."""
    from sinkhole.models.registry import resolve

    if not isinstance(model, (str, Path)) or not str(model).strip():
        raise SinkholeError(f"model must be a bundled name, a model directory or a hub id, not {model!r:.40}")
    source = resolve(str(model))
    if source.kind == "gguf" or source.kind == "bundled":
        from sinkhole.models.gguf_cache import converted_gguf_dir

        path, digest = converted_gguf_dir(Path(source.path), log=lambda msg: None)
        return str(path), f"gguf-sha256:{digest}", source.name
    return source.path, None, source.name


def architecture_of(path: str) -> str:
    from sinkhole.vllm.models import BASES

    config = Path(path) / "config.json"
    if config.is_file():
        try:
            archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SinkholeError(f"cannot read {config}: {err}") from None
    else:  # a hub id: its config from the local Hugging Face cache (never downloads)
        from transformers import AutoConfig

        try:
            archs = AutoConfig.from_pretrained(path, local_files_only=True).architectures or []
        except (OSError, ValueError) as err:
            raise SinkholeError(f"cannot read the config of {path} from local files: {err}") from None
    arch = next((a for a in archs if a in BASES), None)
    if arch is None:
        raise SinkholeError(
            f"sinks + window in vLLM supports {', '.join(BASES)}; {path} is {', '.join(archs) or 'unknown'}"
        )
    return arch


def pinned_positions(profile, n_sink, model_name: str, weights_id: str | None, load_name) -> tuple[int, ...]:
    from sinkhole.cache.sink_cache import profile_positions
    from sinkhole.profiles import SinkProfile, load_profile
    from sinkhole.validate import integer

    if profile is not None and n_sink is not None:
        raise SinkholeError("give profile= or n_sink=, not both (a profile says how many tokens to pin)")
    if profile is None:
        n = DEFAULT_N_SINK if n_sink is None else integer(n_sink, "n_sink", lo=0, hi=65536, example=4)
        return tuple(range(n))
    if isinstance(profile, str) and profile == "detect":
        from sinkhole.experiments.detector import SinkDetector

        profile = SinkDetector(load_name, limit=DETECT_PROMPTS).detect()
    elif not isinstance(profile, SinkProfile):
        profile = load_profile(profile)
    profile.check_model(weights_id=weights_id, name=model_name)
    return tuple(profile_positions(profile))


def resolve_settings(
    model, profile=None, window=DEFAULT_WINDOW, n_sink=None, block_size: int = 16, pin_blocks=DEFAULT_PIN_BLOCKS
) -> SinkSettings:
    """Check everything a user typed and say what the engine will pin and keep."""
    from sinkhole.validate import integer

    window = integer(window, "window", lo=1, example=DEFAULT_WINDOW)
    pin_blocks = integer(pin_blocks, "pin_sink_blocks", lo=0, example=DEFAULT_PIN_BLOCKS)
    if window < block_size:
        raise SinkholeError(
            f"window {window} is smaller than one KV block ({block_size} tokens): vLLM frees whole blocks, "
            f"so use window >= {block_size} (or a smaller block_size)"
        )
    path, weights_id, name = model_path(model)
    arch = architecture_of(path)
    pinned = pinned_positions(profile, n_sink, name, weights_id, model)
    return SinkSettings(model=path, architecture=arch, window=window, pinned=pinned, pin_blocks=pin_blocks)
