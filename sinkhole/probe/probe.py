"""ModelProbe: run a model on prompts and return one compact `Capture` per sequence.

    probe = ModelProbe("smollm2-135m")                  # or ModelProbe(loaded_model)
    capture = probe.run("Explain relativity simply.")   # or a list of token ids
    captures = probe.run_batch([...])                   # left-padded, same numbers as one by one

Batching: sequences are left-padded (`sinkhole.probe.batch`); padding is masked as keys (by the
attention mask), excluded as queries (by `query_valid`), and position ids count only real tokens,
so every statistic of a padded sequence is that of the sequence alone (tests check it).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch

from sinkhole.errors import SinkholeError
from sinkhole.models.registry import DEFAULT_MODEL
from sinkhole.probe.attention import DEFAULT_BLOCK_BYTES
from sinkhole.probe.batch import forward_kwargs, left_pad, pad_id
from sinkhole.probe.capture import Capture, ModelInfo
from sinkhole.probe.hooks import attention_implementation
from sinkhole.probe.loading import LoadedModel, load_model
from sinkhole.probe.recorder import Recorder, recording

EAGER_FALLBACK_MAX_LEN = 2048  # eager output_attentions holds [layers, heads, T, T]: keep T small


def _cfg(cfg, name: str, default=None):
    try:  # some configs raise for per-layer attributes (Gemma-4's head_dim)
        return getattr(cfg, name, default)
    except Exception:  # noqa: BLE001
        return default


def model_info(lm: LoadedModel) -> ModelInfo:
    cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    fam = lm.family
    n_heads = _cfg(cfg, "num_attention_heads") or 1
    d_model = _cfg(cfg, "hidden_size") or 0
    learned = any(hasattr(m, "sinks") and isinstance(m.sinks, torch.nn.Parameter) for m in lm.model.modules())
    return ModelInfo(
        name=lm.name,
        architecture=cfg.model_type,
        family=fam.name,
        norm_style=fam.norm_style,
        n_layers=len(fam.decoder_layers(lm.model)),
        n_heads=n_heads,
        n_kv_heads=_cfg(cfg, "num_key_value_heads") or n_heads,
        d_model=d_model,
        d_head=_cfg(cfg, "head_dim") or d_model // n_heads,
        max_context=lm.max_context,
        weights_id=lm.weights_id,
        dtype=str(lm.dtype).replace("torch.", ""),
        discovery=fam.discovery,
        layer_kinds=list(fam.layer_kinds),
        learned_sinks=learned,
        attention_path="interface" if fam.uses_interface else "eager",
    )


class ModelProbe:
    """Measures residual-stream and attention statistics of a causal LM.

    Args:
        model: a `LoadedModel`, or anything `load_model` takes (bundled name, directory, .gguf).
        maps_max_len: keep full attention maps (L, H, T, T) when T <= this (for the HTML report).
        top_k: residual channels kept per token and layer.
        block_bytes: memory budget of one query block's attention scores.
    """

    def __init__(
        self,
        model=DEFAULT_MODEL,
        device: str = "cpu",
        dtype: str | None = None,
        trust_remote_code: bool = False,
        maps_max_len: int = 0,
        top_k: int = 8,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        log=None,
    ):
        self.lm = (
            model
            if isinstance(model, LoadedModel)
            else load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code, log=log)
        )
        self.info = model_info(self.lm)
        self.maps_max_len, self.top_k, self.block_bytes = maps_max_len, top_k, block_bytes

    @property
    def model(self):
        """The loaded transformers model (reuse it, e.g. for `generate` with a SinkCache; no second load)."""
        return self.lm.model

    @property
    def tokenizer(self):
        """The model's tokenizer."""
        return self.lm.tokenizer

    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode(self, prompt: str | Sequence[int], chat: bool | None = None) -> tuple[list[int], bool]:
        """Token ids of a prompt (chat template applied when `chat`, default: when the tokenizer has one)."""
        if not isinstance(prompt, str):
            from sinkhole.validate import token_ids

            if isinstance(prompt, bytes) or not hasattr(prompt, "__iter__"):
                raise SinkholeError(f"a prompt is a string or a list of token ids, not {type(prompt).__name__}")
            emb = self.lm.model.get_input_embeddings()
            vocab = getattr(emb, "num_embeddings", None) or getattr(self.lm.model.config, "vocab_size", None)
            ids = token_ids(prompt, vocab)
            if not ids:
                raise SinkholeError("empty token list")
            return ids, False
        if not prompt.strip():
            raise SinkholeError("empty prompt")
        if chat is None:
            chat = self.has_chat_template()
        if chat:
            if not self.has_chat_template():
                raise SinkholeError(f"{self.info.name}'s tokenizer has no chat template: use --no-chat")
            enc = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            ids = enc["input_ids"] if hasattr(enc, "keys") else enc
            ids = ids[0] if ids and isinstance(ids[0], list) else ids
        else:
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return [int(i) for i in ids], bool(chat)

    def token_texts(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([i]) for i in ids]

    def run(
        self, prompt: str | Sequence[int], chat: bool | None = None, progress=None, maps_max_len: int | None = None
    ) -> Capture:
        return self.run_batch([prompt], chat=chat, progress=progress, maps_max_len=maps_max_len)[0]

    def run_batch(
        self,
        prompts: Sequence[str | Sequence[int]],
        chat: bool | None = None,
        progress=None,
        maps_max_len: int | None = None,
    ) -> list[Capture]:
        """One forward pass over all prompts (left-padded); one Capture each, padding removed.

        maps_max_len: this run's limit for full attention maps (None: the probe's own), so that one run
        can keep maps without changing the probe for the next."""
        if isinstance(prompts, str):
            raise SinkholeError("run_batch takes a list of prompts: use run(prompt) for one")
        if not prompts:
            raise SinkholeError("no prompts")
        encoded = [self.encode(p, chat) for p in prompts]
        limit = self.info.max_context if (self.info.max_context or 0) > 0 else None
        for ids, _ in encoded:
            if limit and len(ids) > limit:
                raise SinkholeError(f"prompt is {len(ids)} tokens, longer than {self.info.name}'s context of {limit}")
        lengths = [len(ids) for ids, _ in encoded]
        T = max(lengths)
        input_ids, valid = left_pad([ids for ids, _ in encoded], pad_id(self.tokenizer))
        keep_maps = 0 < T <= (self.maps_max_len if maps_max_len is None else maps_max_len)
        rec = self._forward(input_ids, valid, progress, keep_maps)
        out = []
        for b, (ids, used_chat) in enumerate(encoded):
            out.append(self._capture(rec, b, T - len(ids), ids, prompts[b], used_chat))
        return out

    def _forward(self, input_ids: torch.Tensor, valid: torch.Tensor, progress, keep_maps: bool) -> Recorder:
        rec = Recorder(self.info.n_layers, valid, self.top_k, keep_maps, self.block_bytes, progress)
        dev = self.lm.device
        kwargs = forward_kwargs(input_ids, valid, dev)
        if self.lm.family.uses_interface:
            with (
                torch.inference_mode(),
                recording(self.model, self.lm.family, rec),
                _one_line(self.info.architecture),
            ):
                self.model(**kwargs)
        if rec.attn_calls == 0 or (max(rec.attn_layer_calls) > 1 and self.lm.family.attn_repeats):
            # The model's code never called the attention interface (set_attn_implementation did nothing),
            # or a layer attends several times (differential attention, recurrent depth): eager maps instead.
            rec = self._forward_eager(kwargs, valid, progress, keep_maps)
        else:
            self._check_layers(rec)
        if rec.overflowed():
            raise SinkholeError(
                f"activations overflowed in {self.info.dtype} (massive activations exceed float16's 65504): "
                "rerun with --dtype bfloat16 or --dtype float32"
            )
        return rec

    def _forward_eager(self, kwargs: dict, valid: torch.Tensor, progress, keep_maps: bool) -> Recorder:
        """Fallback for models that bypass AttentionInterface: eager attention with output_attentions."""
        B, T = valid.shape
        if T > EAGER_FALLBACK_MAX_LEN:
            raise SinkholeError(
                f"{self.info.architecture} does not use transformers' attention interface; its eager fallback "
                f"holds all attention maps and is limited to {EAGER_FALLBACK_MAX_LEN} tokens (got {T})"
            )
        warnings.warn(
            f"{self.info.architecture} bypasses transformers' AttentionInterface (or attends several times in a "
            "layer): using eager attention "
            f"with output_attentions (memory grows with T^2; limit {EAGER_FALLBACK_MAX_LEN} tokens)",
            stacklevel=3,
        )
        rec = Recorder(self.info.n_layers, valid, self.top_k, keep_maps, self.block_bytes, progress)
        with (
            attention_implementation(self.model, "eager", optional=True),  # models that cannot switch are eager
            torch.inference_mode(),
            recording(self.model, self.lm.family, rec, use_attention=False),
            _one_line(self.info.architecture),
        ):
            out = self.model(**kwargs, output_attentions=True)
        maps = [
            a
            for a in (getattr(out, "attentions", None) or [])  # (B, H, T, T): linear layers may return other things
            if isinstance(a, torch.Tensor) and a.dim() == 4 and a.shape[-2:] == (T, T)
        ]
        layers = self.info.attention_layers
        if len(maps) == self.info.n_layers:
            layers = list(range(self.info.n_layers))
        k = len(maps) // max(len(layers), 1)
        if k > 1 and len(maps) == k * len(layers):  # several attention sublayers per layer: heads side by side
            maps = [torch.cat(maps[i * k : (i + 1) * k], dim=1) for i in range(len(layers))]
        if not maps:
            raise SinkholeError(
                f"{self.info.architecture}: no attention to measure: the model never calls transformers' attention "
                "interface and returns no attention maps with output_attentions (a pure SSM / RNN?)"
            )
        if len(maps) != len(layers):
            raise SinkholeError(
                f"{self.info.architecture}: eager output_attentions returned {len(maps)} attention maps for "
                f"{len(layers)} attention layers (layers run repeatedly?); this model cannot be probed"
            )
        qv = valid.to(maps[0].device)
        for layer, a in zip(layers, maps):  # (B, H, T, T)
            a = a.float() * qv[:, None, :, None]
            rec.attn_colsum[layer] = a.sum(dim=-2).cpu()
            rec.attn_layer_calls[layer] = k if k > 1 else 1
            if rec.keep_maps:
                rec.attn_maps[layer] = a.half().cpu()
        self.info.attention_path = "eager"
        return rec

    def _check_layers(self, rec: Recorder) -> None:
        """The layers attention ran in (once each) are the attention layers."""
        ran = [l for l, n in enumerate(rec.attn_layer_calls) if n >= 1]
        if ran != self.info.attention_layers:
            kinds = list(self.info.layer_kinds) or ["attention"] * self.info.n_layers
            for l in range(self.info.n_layers):  # what this forward shows wins over the discovery pass
                if l in ran:
                    kinds[l] = "attention"
                elif kinds[l] == "attention":
                    kinds[l] = "non_attention"
            self.info.layer_kinds = kinds

    def _capture(self, rec: Recorder, b: int, start: int, ids: list[int], prompt, chat: bool) -> Capture:
        n = len(ids)
        s = slice(start, None)
        colsum = _stack_layers(
            [None if c is None else c[b, :, s] for c in rec.attn_colsum]
        )  # (L, H, n), NaN off-attention
        alpha = colsum / torch.arange(n, 0, -1, dtype=torch.float32)  # queries t >= k: n - k of them
        maps = None
        if rec.keep_maps and any(m is not None for m in rec.attn_maps):
            maps = _stack_layers([None if m is None else m[b, :, s, s].float() for m in rec.attn_maps]).half().numpy()
        share = None
        if any(m is not None for m in rec.sink_mass):
            # sink_mass sums the sink's probability over this sequence's n (valid) query rows
            share = (_stack_layers([None if m is None else m[b][:, None] for m in rec.sink_mass])[..., 0] / n).numpy()
        return Capture(
            model=self.info,
            token_ids=list(ids),
            tokens=self.token_texts(list(ids)),
            resid_norm=rec.resid_norm[:, b, s].numpy(),
            resid_top_channels=rec.resid_top_channels[:, b, s].numpy(),
            resid_top_values=rec.resid_top_values[:, b, s].numpy(),
            attn_out_norm=rec.attn_out_norm[:, b, s].numpy(),
            ffn_out_norm=rec.ffn_out_norm[:, b, s].numpy(),
            embed_norm=rec.embed_norm[b, s].numpy(),
            attn_mass=alpha.numpy().astype(np.float32),
            attn_maps=maps,
            sink_share=share,
            prompt=prompt if isinstance(prompt, str) else None,
            chat=chat,
        )


@contextmanager
def _one_line(architecture: str):
    """A failure inside the model's own forward becomes one SinkholeError line, never a traceback."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, IndexError, AttributeError, NotImplementedError) as err:
        msg = str(err).splitlines()[0][:200] if str(err) else ""
        raise SinkholeError(
            f"{architecture}: the model's forward failed under the probe ({type(err).__name__}: {msg})"
        ) from err


def _stack_layers(per_layer: list) -> torch.Tensor:
    """Stack per-layer (H, ...) tensors; a layer without one (not attention) is all NaN; heads padded with NaN."""
    present = [t for t in per_layer if t is not None]
    H = max(t.shape[0] for t in present)
    shape = present[0].shape[1:]
    out = torch.full((len(per_layer), H, *shape), float("nan"), dtype=torch.float32)
    for l, t in enumerate(per_layer):
        if t is not None:
            out[l, : t.shape[0]] = t.float()
    return out


def progress_printer(n_layers: int, stream=sys.stderr):
    """A minimal per-layer progress callback for long single forwards."""
    from sinkhole.progress import progress

    bar = progress(total=n_layers, desc="layers", unit="layer", file=stream, leave=False)

    def tick(layer: int) -> None:
        bar.update(1)
        if bar.n >= n_layers:
            bar.close()

    return tick
