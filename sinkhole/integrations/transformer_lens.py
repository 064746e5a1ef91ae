"""TransformerLens 4 (TransformerBridge): sinkhole's numbers from a `run_with_cache` cache.

    bridge = TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tok)
    logits, cache = bridge.run_with_cache(tokens)              # tokens (1, T), or (B, T) unpadded
    report = analyze(capture_from_cache(bridge, cache, tokens))  # what `sinkhole analyze` reports
    mask = mask_from_cache(cache, tokens, layer=15)              # what `sinkhole.token_mask` returns

Why from the cache and not from the HF module: `boot_transformers` replaces the HF model's
submodules with its own bridge components in place and forces eager attention computed by the
bridge, so the model no longer calls transformers' attention interface that sinkhole's probe
hooks. The cache holds what the definitions need: `blocks.{l}.hook_resid_post` is the decoder
layer's output h_l, `blocks.{l}.attn.hook_pattern` the attention probabilities A_{l,h}[t, k] (so
alpha is exact for every key), `hook_attn_out` / `hook_mlp_out` the blocks' contributions. With
raw HF weights (the bridge's default, not `enable_compatibility_mode()`) the numbers equal those of
sinkhole's probe on the same HF model up to float rounding (tests/test_integrations.py).
To probe with sinkhole itself (any length: no [T, T] patterns), run it on the HF model before
handing the model to the bridge, or on a second copy.
"""

from __future__ import annotations

import numpy as np
import torch

from sinkhole.mask.compute import MaskSettings, TokenMask, mask_from_stats
from sinkhole.probe.capture import Capture, ModelInfo


def _layers(cache) -> int:
    n = 0
    while f"blocks.{n}.hook_resid_post" in cache:
        n += 1
    if n == 0:
        from sinkhole.errors import SinkholeError

        raise SinkholeError(
            "the cache holds no blocks.{l}.hook_resid_post: run_with_cache(tokens) without a names_filter, "
            "or one that keeps hook_resid_post and attn.hook_pattern"
        )
    return n


def _get(cache, name: str, b: int) -> np.ndarray:
    return cache[name][b].detach().float().cpu().numpy()


def cache_stats(cache, b: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """resid_norm (L, T) and alpha (L, H, T) of batch row b (an unpadded sequence) of a cache."""
    L = _layers(cache)
    resid = np.stack([np.linalg.norm(_get(cache, f"blocks.{l}.hook_resid_post", b), axis=-1) for l in range(L)])
    T = resid.shape[1]
    alpha = []
    for l in range(L):
        name = f"blocks.{l}.attn.hook_pattern"
        if name not in cache:  # not an attention layer (or filtered out): left out of every attention average
            alpha.append(None)
            continue
        colsum = _get(cache, name, b).sum(axis=-2)  # (H, T): sum over queries t of A[t, k]
        alpha.append(colsum / (T - np.arange(T))[None, :])  # mean over the T - k queries t >= k
    H = max(a.shape[0] for a in alpha if a is not None)
    out = np.full((L, H, T), np.nan, np.float32)
    for l, a in enumerate(alpha):
        if a is not None:
            out[l, : a.shape[0]] = a
    return resid.astype(np.float32), out


def mask_from_cache(cache, tokens, b: int = 0, layer: int | None = None, **settings) -> TokenMask:
    """The token mask of batch row b from a cache (every key measured: the patterns are complete).
    settings: MaskSettings' threshold, epsilon, min_sink_rate."""
    resid, alpha = cache_stats(cache, b)
    s = MaskSettings(layer=layer, candidates=None, **settings).checked(resid.shape[0])
    ids = torch.as_tensor(tokens)[b] if torch.as_tensor(tokens).dim() == 2 else torch.as_tensor(tokens)
    return mask_from_stats(ids.tolist(), resid, alpha, np.arange(resid.shape[1]), s)


def model_info(bridge, name: str = "transformer_lens") -> ModelInfo:
    cfg = bridge.cfg
    n_heads = int(cfg.n_heads)
    return ModelInfo(
        name=name,
        architecture=str(getattr(cfg, "original_architecture", None) or "transformer_lens"),
        family="transformer_lens",
        norm_style="pre",
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or n_heads),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        max_context=getattr(cfg, "n_ctx", None),
        dtype=str(getattr(cfg, "dtype", "float32")).replace("torch.", ""),
        discovery="transformer_lens",
        attention_path="transformer_lens",
    )


def capture_from_cache(bridge, cache, tokens, b: int = 0, top_k: int = 8, name: str = "transformer_lens") -> Capture:
    """A sinkhole `Capture` of batch row b, for `sinkhole.analyze` (the report `sinkhole analyze` writes)."""
    resid_norm, alpha = cache_stats(cache, b)
    L, T = resid_norm.shape
    top_c, top_v, attn_out, ffn_out = [], [], [], []
    for l in range(L):
        h = torch.as_tensor(_get(cache, f"blocks.{l}.hook_resid_post", b))
        top = torch.topk(h.abs(), k=min(top_k, h.shape[-1]), dim=-1)
        top_c.append(top.indices.to(torch.int32).numpy())
        top_v.append(torch.gather(h, -1, top.indices).numpy())
        for store, hook in ((attn_out, "hook_attn_out"), (ffn_out, "hook_mlp_out")):
            key = f"blocks.{l}.{hook}"
            store.append(np.linalg.norm(_get(cache, key, b), axis=-1) if key in cache else np.full(T, np.nan))
    embed = "hook_embed" if "hook_embed" in cache else "blocks.0.hook_resid_pre"
    ids = torch.as_tensor(tokens)
    ids = (ids[b] if ids.dim() == 2 else ids).tolist()
    tokenizer = getattr(bridge, "tokenizer", None)
    texts = [tokenizer.decode([i]) for i in ids] if tokenizer is not None else [str(i) for i in ids]
    return Capture(
        model=model_info(bridge, name),
        token_ids=ids,
        tokens=texts,
        resid_norm=resid_norm,
        resid_top_channels=np.stack(top_c),
        resid_top_values=np.stack(top_v).astype(np.float32),
        attn_out_norm=np.stack(attn_out).astype(np.float32),
        ffn_out_norm=np.stack(ffn_out).astype(np.float32),
        embed_norm=np.linalg.norm(_get(cache, embed, b), axis=-1).astype(np.float32),
        attn_mass=alpha,
    )
