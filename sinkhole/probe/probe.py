"""ModelProbe: run a model on prompts and return one compact `Capture` per sequence.

    probe = ModelProbe("smollm2-135m")                  # or ModelProbe(loaded_model)
    capture = probe.run("Explain relativity simply.")   # or a list of token ids
    captures = probe.run_batch([...])                   # left-padded, same numbers as one by one

Batching: sequences are left-padded; padding is masked as keys (by the attention mask), excluded
as queries (by `query_valid`), and position ids count only real tokens, so every statistic of a
padded sequence is that of the sequence alone (tests check it).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from sinkhole.errors import SinkholeError
from sinkhole.models.loading import LoadedModel, load_model
from sinkhole.probe.attention import DEFAULT_BLOCK_BYTES
from sinkhole.probe.capture import Capture, ModelInfo
from sinkhole.probe.recorder import Recorder, recording

EAGER_FALLBACK_MAX_LEN = 2048  # eager output_attentions holds [layers, heads, T, T]: keep T small


def model_info(lm: LoadedModel) -> ModelInfo:
    cfg = lm.config
    n_heads = cfg.num_attention_heads
    return ModelInfo(
        name=lm.name,
        architecture=cfg.model_type,
        family=lm.family.name,
        norm_style=lm.family.norm_style,
        n_layers=cfg.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
        d_model=cfg.hidden_size,
        d_head=getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads,
        max_context=lm.max_context,
        weights_id=lm.weights_id,
        dtype=str(lm.dtype).replace("torch.", ""),
    )


class ModelProbe:
    """Measures residual-stream and attention statistics of a causal LM.

    Args:
        model: a `LoadedModel`, or anything `load_model` takes (bundled name, directory, .gguf).
        maps_max_len: keep full attention maps (L, H, T, T) when T <= this (for the HTML report).
        top_k: residual channels kept per token and layer.
        block_bytes: memory budget of one query block's attention scores.
    """

    def __init__(self, model="smollm2-135m", device: str = "cpu", dtype: str | None = None,
                 trust_remote_code: bool = False, maps_max_len: int = 0, top_k: int = 8,
                 block_bytes: int = DEFAULT_BLOCK_BYTES, log=None):
        self.lm = model if isinstance(model, LoadedModel) else load_model(
            model, device=device, dtype=dtype, trust_remote_code=trust_remote_code, log=log
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

    def run(self, prompt: str | Sequence[int], chat: bool | None = None, progress=None) -> Capture:
        return self.run_batch([prompt], chat=chat, progress=progress)[0]

    def run_batch(self, prompts: Sequence[str | Sequence[int]], chat: bool | None = None, progress=None) -> list[Capture]:
        """One forward pass over all prompts (left-padded); one Capture each, padding removed."""
        if isinstance(prompts, str):
            raise SinkholeError("run_batch takes a list of prompts: use run(prompt) for one")
        if not prompts:
            raise SinkholeError("no prompts")
        encoded = [self.encode(p, chat) for p in prompts]
        limit = self.info.max_context
        for ids, _ in encoded:
            if limit and len(ids) > limit:
                raise SinkholeError(f"prompt is {len(ids)} tokens, longer than {self.info.name}'s context of {limit}")
        lengths = [len(ids) for ids, _ in encoded]
        T, B = max(lengths), len(encoded)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((B, T), pad, dtype=torch.long)
        valid = torch.zeros(B, T, dtype=torch.bool)
        for b, (ids, _) in enumerate(encoded):
            input_ids[b, T - len(ids):] = torch.tensor(ids)
            valid[b, T - len(ids):] = True
        rec = self._forward(input_ids, valid, progress)
        out = []
        for b, (ids, used_chat) in enumerate(encoded):
            out.append(self._capture(rec, b, T - len(ids), ids, prompts[b], used_chat))
        return out

    def _forward(self, input_ids: torch.Tensor, valid: torch.Tensor, progress) -> Recorder:
        B, T = input_ids.shape
        keep_maps = 0 < T <= self.maps_max_len
        rec = Recorder(self.info.n_layers, valid, self.top_k, keep_maps, self.block_bytes, progress)
        dev = self.lm.device
        kwargs = dict(
            input_ids=input_ids.to(dev),
            attention_mask=valid.long().to(dev),
            position_ids=(valid.long().cumsum(-1) - 1).clamp(min=0).to(dev),
            use_cache=False,
            logits_to_keep=1,  # the probe needs no logits; [T, vocab] would dominate memory
        )
        with torch.inference_mode(), recording(self.model, self.lm.family, rec):
            self.model(**kwargs)
        if rec.attn_calls == 0:
            # The model's code never called the attention interface: set_attn_implementation did nothing.
            rec = self._forward_eager(kwargs, valid, progress)
        elif rec.attn_calls != self.info.n_layers:
            raise SinkholeError(
                f"{self.info.architecture}: attention ran {rec.attn_calls} times for {self.info.n_layers} layers; "
                "this architecture is not supported by the probe"
            )
        if rec.overflowed():
            raise SinkholeError(
                f"activations overflowed in {self.info.dtype} (massive activations exceed float16's 65504): "
                "rerun with --dtype bfloat16 or --dtype float32"
            )
        return rec

    def _forward_eager(self, kwargs: dict, valid: torch.Tensor, progress) -> Recorder:
        """Fallback for models that bypass AttentionInterface: eager attention with output_attentions."""
        B, T = valid.shape
        if T > EAGER_FALLBACK_MAX_LEN:
            raise SinkholeError(
                f"{self.info.architecture} does not use transformers' attention interface; its eager fallback "
                f"holds all attention maps and is limited to {EAGER_FALLBACK_MAX_LEN} tokens (got {T})"
            )
        warnings.warn(
            f"{self.info.architecture} bypasses transformers' AttentionInterface: using eager attention "
            f"with output_attentions (memory grows with T^2; limit {EAGER_FALLBACK_MAX_LEN} tokens)",
            stacklevel=3,
        )
        rec = Recorder(self.info.n_layers, valid, self.top_k, 0 < T <= self.maps_max_len, self.block_bytes, progress)
        previous = self.model.config._attn_implementation
        self.model.set_attn_implementation("eager")
        try:
            with torch.inference_mode(), recording(self.model, self.lm.family, rec, use_attention=False):
                out = self.model(**kwargs, output_attentions=True)
        finally:
            self.model.set_attn_implementation(previous)
        qv = valid.to(out.attentions[0].device)
        for layer, a in enumerate(out.attentions):  # (B, H, T, T)
            a = a.float() * qv[:, None, :, None]
            rec.attn_colsum[layer] = a.sum(dim=-2).cpu()
            if rec.keep_maps:
                rec.attn_maps[layer] = a.half().cpu()
        return rec

    def _capture(self, rec: Recorder, b: int, start: int, ids: list[int], prompt, chat: bool) -> Capture:
        n = len(ids)
        s = slice(start, None)
        colsum = torch.stack([c[b, :, s] for c in rec.attn_colsum])  # (L, H, n)
        alpha = colsum / torch.arange(n, 0, -1, dtype=torch.float32)  # queries t >= k: n - k of them
        maps = None
        if rec.keep_maps and all(m is not None for m in rec.attn_maps):
            maps = torch.stack([m[b, :, s, s] for m in rec.attn_maps]).numpy()
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
            prompt=prompt if isinstance(prompt, str) else None,
            chat=chat,
        )


def progress_printer(n_layers: int, stream=sys.stderr):
    """A minimal per-layer progress callback for long single forwards."""
    from sinkhole.progress import progress

    bar = progress(total=n_layers, desc="layers", unit="layer", file=stream, leave=False)

    def tick(layer: int) -> None:
        bar.update(1)
        if bar.n >= n_layers:
            bar.close()

    return tick
