"""What a probe keeps from one sequence: compact per-layer arrays, never [layers, T, d_model] or
[layers, heads, T, T] (except tiny inputs' attention maps, kept on request for the HTML report).

Shapes (L layers, H query heads, T tokens of this sequence, K = top channels kept per token):
    resid_norm          (L, T)    ||h_l[t]||_2, h_l = output of decoder layer l
    resid_top_channels  (L, T, K) channels of the K largest |h_l[t, c]|, largest first
    resid_top_values    (L, T, K) the signed values h_l[t, c] at those channels
    attn_out_norm       (L, T)    norm of the attention block's contribution to the residual
    ffn_out_norm        (L, T)    norm of the FFN block's contribution to the residual
    embed_norm          (T,)      norm of the residual entering layer 0 (hidden_states[0]: the token
                                  embedding plus position embeddings or whatever the model adds first)
    attn_mass           (L, H, T) alpha_{l,h}(k) = mean over queries t >= k of A_{l,h}[t, k]
    attn_maps           (L, H, T, T) float16, only when T <= the probe's `maps_max_len`
    sink_share          (L, H)    share of attention the learned sink absorbs (gpt-oss `s_aux`): mean over
                                  queries of its probability; None for models without learned sinks
Layers that are not attention (linear-attention / SSM / conv layers of a hybrid, `model.layer_kinds`)
have NaN in attn_mass, attn_maps and sink_share: nothing is measured there. A layer whose residual
contributions could not be identified has NaN attn_out_norm / ffn_out_norm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sinkhole.results.report import ModelInfo  # the report's `model`, a result type (probe code imports it here)


@dataclass
class Capture:
    model: ModelInfo
    token_ids: list[int]
    tokens: list[str]
    resid_norm: np.ndarray
    resid_top_channels: np.ndarray
    resid_top_values: np.ndarray
    attn_out_norm: np.ndarray
    ffn_out_norm: np.ndarray
    embed_norm: np.ndarray
    attn_mass: np.ndarray
    attn_maps: np.ndarray | None = None
    sink_share: np.ndarray | None = None
    prompt: str | None = None
    chat: bool = False
    meta: dict = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def attn_colsum(self) -> np.ndarray:
        """(L, H, T) total attention received: sum over queries t >= k of A[t, k] = alpha * (T - k)."""
        return self.attn_mass * (self.n_tokens - np.arange(self.n_tokens))[None, None, :]

    _ARRAYS = (
        "resid_norm",
        "resid_top_channels",
        "resid_top_values",
        "attn_out_norm",
        "ffn_out_norm",
        "embed_norm",
        "attn_mass",
        "attn_maps",
        "sink_share",
    )

    def save(self, path: str | Path) -> None:
        """One .npz holding the arrays and a JSON header (model, tokens, prompt)."""
        header = {
            "model": self.model.to_dict(),
            "token_ids": self.token_ids,
            "tokens": self.tokens,
            "prompt": self.prompt,
            "chat": self.chat,
            "meta": self.meta,
        }
        arrays = {k: getattr(self, k) for k in self._ARRAYS if getattr(self, k) is not None}
        np.savez_compressed(path, header=np.array(json.dumps(header)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Capture:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            arrays = {k: z[k] for k in cls._ARRAYS if k in z.files}
        return cls(model=ModelInfo(**header.pop("model")), **header, **arrays)
