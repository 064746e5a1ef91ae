"""Load a causal LM and its tokenizer, offline.

- Bundled names and `.gguf` files: transformers dequantizes GGUF on load (~15-50 s). The result is
  saved once as safetensors under `cache_dir()/gguf/<sha256 of the file>/`, verified on every
  load, rebuilt when damaged, converted under a lock (sinkhole.models.gguf_cache); later loads
  take well under a second.
- Directories and hub ids: `local_files_only=True` always, and huggingface_hub is switched to
  offline mode (`go_offline`); sinkhole never downloads or sends a request.
- `trust_remote_code` is passed through only when the user asks for it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sinkhole.errors import SinkholeError
from sinkhole.models.dtypes import default_dtype
from sinkhole.models.families import Family
from sinkhole.models.gguf_cache import check_content_later, converted_gguf_dir
from sinkhole.models.registry import DEFAULT_MODEL, ModelSource, resolve
from sinkhole.probe.trace import family_for

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("cpu", "cuda", "auto")


@dataclass
class LoadedModel:
    """A model ready to probe. `name` is what reports call it; `weights_id` identifies the weights."""

    model: torch.nn.Module
    tokenizer: object
    family: Family
    source: ModelSource
    name: str
    weights_id: str
    device: torch.device
    dtype: torch.dtype
    extra: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config

    @property
    def max_context(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    @classmethod
    def wrap(cls, model: torch.nn.Module, tokenizer=None, name: str = "custom") -> LoadedModel:
        """Use an already-built model (a test's tiny random model, say) without loading anything."""
        model.eval().requires_grad_(False)
        p = next(model.parameters())
        return cls(
            model=model,
            tokenizer=tokenizer,
            family=family_for(model),
            source=ModelSource("object", name, ""),
            name=name,
            weights_id="",
            device=p.device,
            dtype=p.dtype,
        )


def _dir_weights_id(path: Path) -> str:
    """Cheap identity of a model directory: hash of config.json and weight file names and sizes."""
    h = hashlib.sha256()
    for p in sorted(path.iterdir()):
        if p.suffix in (".json", ".safetensors", ".bin"):
            h.update(p.name.encode())
            h.update(str(p.stat().st_size).encode())
            if p.name == "config.json":
                h.update(p.read_bytes())
    return h.hexdigest()


def pick_device_dtype(device: str, dtype: str | None) -> tuple[str, torch.dtype]:
    if not isinstance(device, str):
        raise SinkholeError(f"device must be a string (cpu, cuda, cuda:N, auto), not {device!r}")
    if dtype is not None and not isinstance(dtype, str):
        raise SinkholeError(f"dtype must be a string ({', '.join(DTYPES)}), not {dtype!r}")
    if device not in DEVICES and not device.startswith("cuda:"):
        raise SinkholeError(f"unknown device '{device}': use one of {', '.join(DEVICES)} (or cuda:N)")
    if device != "cpu" and not torch.cuda.is_available():
        raise SinkholeError(f"device '{device}' needs CUDA, which this machine does not have: use --device cpu")
    if dtype in (None, "", "default"):
        dtype = default_dtype(device)
    if dtype not in DTYPES:
        raise SinkholeError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    return device, DTYPES[dtype]


def _check_causal(config) -> None:
    if getattr(config, "is_encoder_decoder", False):
        raise SinkholeError(f"{config.model_type} is an encoder-decoder model, not a decoder-only causal LM")
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs):
        raise SinkholeError(
            f"{archs[0]} ({config.model_type}) is not a causal LM; sinkhole needs a decoder-only model"
        )


def go_offline() -> None:
    """Offline mode for the whole process: huggingface_hub reads HF_HUB_OFFLINE once at import, and
    with it unset even local_files_only=True loads contact the hub (its user-agent registry)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import huggingface_hub.constants as hub_constants

    hub_constants.HF_HUB_OFFLINE = True


def _raise_load_error(model, err: Exception, what: str):
    """A transformers / safetensors loading failure as one SinkholeError line that says what to do."""
    text = str(err)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(err).__name__)
    if "trust_remote_code" in text or "custom code" in text:
        raise SinkholeError(
            f"{model} ships its own model code: pass --trust-remote-code (trust_remote_code=True) if you trust it"
        ) from None
    if (
        "size mismatch" in text
        or "mismatched_sizes" in text
        or "shape" in first.lower()
        and "mismatch" in text.lower()
    ):
        raise SinkholeError(
            f"the weights of '{model}' do not match its config.json ({first[:160]}): "
            "use the config the weights were saved with"
        ) from None
    if (
        isinstance(err, (ValueError, OSError, RuntimeError, KeyError, EnvironmentError))
        or "Error" in type(err).__name__
    ):
        raise SinkholeError(f"{what.format(model=model)}: {first[:300]}") from None
    raise err


def load_model(
    model: str = DEFAULT_MODEL,
    device: str = "cpu",
    dtype: str | None = None,
    trust_remote_code: bool = False,
    log=None,
    _retry: bool = False,
) -> LoadedModel:
    """Load a model by bundled short name, local directory, cached hub id or `.gguf` path. Never downloads."""
    go_offline()
    if not isinstance(model, (str, os.PathLike)):
        raise SinkholeError(
            f"model must be a name, directory or .gguf path (or a LoadedModel), not {type(model).__name__}"
        )
    if not isinstance(trust_remote_code, bool):
        raise SinkholeError(f"trust_remote_code must be True or False, not {trust_remote_code!r}")
    given_log = log
    quiet = log is None  # only the CLI (which passes `log`) says "loading ..." for the usual few seconds
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if device == "auto" and not torch.cuda.is_available():
        log("device auto: no CUDA device on this machine, using the CPU")
        device = "cpu"
    device, torch_dtype = pick_device_dtype(device, dtype)
    source = resolve(model)
    check = None  # a converted GGUF's content hashes, checked beside the load (gguf_cache)
    if source.kind in ("bundled", "gguf"):
        path, digest = converted_gguf_dir(Path(source.path), log=log, content=False)
        check = check_content_later(path, log)
        weights_id = f"gguf-sha256:{digest}"
    else:
        path, weights_id = source.path, ""
    try:
        lm, tok, config = _load(model, source, path, device, torch_dtype, trust_remote_code, quiet, log)
    except Exception:  # damaged weights may fail the load itself: the check then says why
        if check is None or check.result() is None:
            raise
    if check is not None and check.result() is not None:
        if _retry:
            raise SinkholeError(
                f"the converted model in {path} is damaged again right after rebuilding it: {check.result()}"
            )
        converted_gguf_dir(Path(source.path), log=log)  # finds the damage again, rebuilds with one notice
        return load_model(model, device, dtype, trust_remote_code, given_log, _retry=True)
    if source.kind == "hf" and Path(path).is_dir():
        weights_id = f"dir:{_dir_weights_id(Path(path))}"
    elif source.kind == "hf":
        weights_id = f"hub:{source.path}:{getattr(config, '_commit_hash', '') or ''}"
    if getattr(tok, "pad_token_id", None) is None and getattr(tok, "eos_token", None) is not None:
        tok.pad_token = tok.eos_token  # batching needs a pad id; padded positions are masked anyway
    return LoadedModel(
        model=lm,
        tokenizer=tok,
        family=family_for(lm),
        source=source,
        name=source.name,
        weights_id=weights_id,
        device=next(lm.parameters()).device,
        dtype=torch_dtype,
    )


def _load(model, source, path, device, torch_dtype, trust_remote_code, quiet, log):
    """(model, tokenizer, config) from a local directory or cached hub id, as one-line errors."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(path, **kw)
    except Exception as err:
        _raise_load_error(model, err, "cannot load model '{model}' from local files (sinkhole never downloads)")
    _check_causal(config)
    placement = {"device_map": "auto"} if device == "auto" else {}
    if not quiet:
        log(f"loading {source.name} ({device}, {str(torch_dtype).removeprefix('torch.')}) ...")
    try:
        tok = AutoTokenizer.from_pretrained(path, **kw)
    except Exception as err:
        if "tokenizer" in str(err).lower() and Path(str(path)).is_dir():
            raise SinkholeError(
                f"{model} has no usable tokenizer (tokenizer.json or tokenizer.model with its config): "
                "save the tokenizer beside the weights (tokenizer.save_pretrained(dir))"
            ) from None
        _raise_load_error(model, err, "cannot load the tokenizer of '{model}'")
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **placement, **kw)
    except Exception as err:
        _raise_load_error(model, err, "cannot load '{model}' as a causal LM")
    if device != "auto":
        lm = lm.to(device)
    lm.eval().requires_grad_(False)
    return lm, tok, config
