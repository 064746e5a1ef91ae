"""Load a causal LM and its tokenizer, offline.

- Bundled names and `.gguf` files: transformers dequantizes GGUF on load (~15-50 s). The result is
  saved once as safetensors under `cache_dir()/gguf/<sha256 of the file>/`, written to a temporary
  folder and renamed, so an interrupted conversion never leaves a half cache; later loads take
  well under a second.
- Directories and hub ids: `local_files_only=True` always; sinkhole never downloads.
- `trust_remote_code` is passed through only when the user asks for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sinkhole.errors import SinkholeError
from sinkhole.models.families import Family, family_for
from sinkhole.models.registry import ModelSource, resolve

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("cpu", "cuda", "auto")


def cache_dir() -> Path:
    """`$SINKHOLE_CACHE`, else `$XDG_CACHE_HOME/sinkhole`, else `~/.cache/sinkhole`."""
    if os.environ.get("SINKHOLE_CACHE"):
        return Path(os.environ["SINKHOLE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sinkhole"


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
    def wrap(cls, model: torch.nn.Module, tokenizer=None, name: str = "custom") -> "LoadedModel":
        """Use an already-built model (a test's tiny random model, say) without loading anything."""
        model.eval().requires_grad_(False)
        p = next(model.parameters())
        return cls(model=model, tokenizer=tokenizer, family=family_for(model),
                   source=ModelSource("object", name, ""), name=name, weights_id="",
                   device=p.device, dtype=p.dtype)


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised in the cache by (path, size, mtime) since large GGUFs take seconds."""
    path = Path(path).resolve()
    st = path.stat()
    memo = cache_dir() / "hashes" / (hashlib.sha1(str(path).encode()).hexdigest() + ".json")
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        data = json.loads(memo.read_text())
        if data["key"] == key:
            return data["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    write_atomic(memo, json.dumps({"key": key, "sha256": digest}))
    return digest


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def converted_gguf_dir(gguf: Path, log=print) -> tuple[Path, str]:
    """Directory of safetensors converted from `gguf` (converting on first use), and the file's sha256."""
    digest = file_sha256(gguf)
    target = cache_dir() / "gguf" / digest[:24]
    if (target / "config.json").is_file() and (target / "sinkhole-source.json").is_file():
        return target, digest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"converting {gguf.name} to safetensors once (cached in {target}) ...")
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as err:  # the gguf reader raises many types on a damaged file
        raise SinkholeError(f"cannot read GGUF file {gguf}: {type(err).__name__}: {err}".splitlines()[0]) from err
    # save_pretrained refuses a GGUF-loaded model until its quantizer is dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "sinkhole-source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": digest}))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target, digest


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
    if device not in DEVICES and not device.startswith("cuda:"):
        raise SinkholeError(f"unknown device '{device}': use one of {', '.join(DEVICES)} (or cuda:N)")
    if device != "cpu" and not torch.cuda.is_available():
        raise SinkholeError(f"device '{device}' needs CUDA, which this machine does not have: use --device cpu")
    if dtype in (None, "", "default"):
        return device, torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise SinkholeError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    return device, DTYPES[dtype]


def _check_causal(config) -> None:
    if getattr(config, "is_encoder_decoder", False):
        raise SinkholeError(f"{config.model_type} is an encoder-decoder model, not a decoder-only causal LM")
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs):
        raise SinkholeError(f"{archs[0]} ({config.model_type}) is not a causal LM; sinkhole needs a decoder-only model")


def load_model(
    model: str = "smollm2-135m",
    device: str = "cpu",
    dtype: str | None = None,
    trust_remote_code: bool = False,
    log=None,
) -> LoadedModel:
    """Load a model by bundled short name, local directory, cached hub id or `.gguf` path."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quiet = log is None  # only the CLI (which passes `log`) says "loading ..." for the usual few seconds
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if device == "auto" and not torch.cuda.is_available():
        log("device auto: no CUDA device on this machine, using the CPU")
        device = "cpu"
    device, torch_dtype = pick_device_dtype(device, dtype)
    source = resolve(model)
    if source.kind in ("bundled", "gguf"):
        path, digest = converted_gguf_dir(Path(source.path), log=log)
        weights_id = f"gguf-sha256:{digest}"
    else:
        path, weights_id = source.path, ""
    kw = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(path, **kw)
    except Exception as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "trust_remote_code" in msg:
            raise SinkholeError(f"{model} ships its own model code: pass --trust-remote-code if you trust it") from err
        raise SinkholeError(f"cannot load model '{model}' from local files (sinkhole never downloads): {msg}") from err
    _check_causal(config)
    placement = {"device_map": "auto"} if device == "auto" else {}
    if not quiet:
        log(f"loading {source.name} ({device}, {str(torch_dtype).removeprefix('torch.')}) ...")
    try:
        tok = AutoTokenizer.from_pretrained(path, **kw)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **placement, **kw)
    except ValueError as err:
        raise SinkholeError(f"cannot load '{model}' as a causal LM: {str(err).splitlines()[0]}") from err
    except OSError as err:
        raise SinkholeError(f"cannot load model '{model}' from local files: {str(err).splitlines()[0]}") from err
    if device != "auto":
        lm = lm.to(device)
    lm.eval().requires_grad_(False)
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
