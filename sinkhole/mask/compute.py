"""The token mask: per token, is it a spike token, is it a sink, and how large is its norm against
the in-context median. What interpretability tools need to drop (or study) these tokens.

    from sinkhole import token_mask
    m = token_mask("smollm2-135m", "The cat sat on the mat.")   # one TokenMask
    m.masked          # (T,) bool: spike or sink; m.keep is its complement
    masks = token_mask(probe, ["text one", "text two"], layer=15)

Definitions (those of `sinkhole.analysis.core`, computed by its functions, never redefined):
- norm_ratio[t] = the spike score S[t]: the token's residual norm over the sequence's median;
  with `layer`, ||h_layer[t]|| / median_s ||h_layer[s]||, else the peak over layers (core's S[t]).
- spike[t] = norm_ratio[t] > threshold.
- sink_rate[t] = share of attention (layer, head) pairs with alpha_{l,h}(t) > epsilon;
  sink[t] = sink_rate[t] >= min_sink_rate (core's sink token). `layer` does not apply: a sink is
  defined over all attention layers.

Cost: the forward is a plain one (`sinkhole.probe.lse_attention`: SDPA's kernel plus its lse), and
alpha is computed afterwards for the candidate keys only: the first token, every spike token, and
the `candidates` tokens of largest peak spike score. A token outside them is not measured
(`measured` False, sink_rate and attn_mass NaN, sink False). `candidates=None` measures every
token with the probe's exact path (blockwise, no [T, T] tensor, nothing kept). Models or attention
the fast path does not cover (softcap, learned sinks, a GPU, ...) run through the exact probe too.
Tests check both against `analyze` on the same inputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from sinkhole.analysis.core import (
    DEFAULT_EPSILON,
    DEFAULT_MIN_SINK_RATE,
    DEFAULT_THRESHOLD,
    attention_mass,
    attention_rows,
    sink_rate,
    spike_scores,
)
from sinkhole.errors import SinkholeError

DEFAULT_CANDIDATES = 16  # beside the first token and the spike tokens (SmolLM2 has 1-3 sinks a prompt)


@dataclass(frozen=True)
class MaskSettings:
    """Everything that decides a mask's numbers (a resumed run must agree on all of it)."""

    layer: int | None = None  # spike / norm_ratio at this decoder layer; None: the peak over layers
    threshold: float = DEFAULT_THRESHOLD
    epsilon: float = DEFAULT_EPSILON
    min_sink_rate: float = DEFAULT_MIN_SINK_RATE
    candidates: int | None = DEFAULT_CANDIDATES  # None: every token is a candidate key
    chat: bool = False  # corpus text, as SAEs are trained on: no chat template by default

    def checked(self, n_layers: int | None) -> MaskSettings:
        """Validated (one-line errors); n_layers None: before the model is loaded, every check but
        the layer's upper bound."""
        from sinkhole.validate import analysis_params, integer

        t, e, r = analysis_params(self.threshold, self.epsilon, self.min_sink_rate)
        hi = None if n_layers is None else n_layers - 1
        layer = None if self.layer is None else integer(self.layer, "layer", lo=0, hi=hi, example=15)
        cands = None if self.candidates is None else integer(self.candidates, "candidates", lo=0, example=16)
        return MaskSettings(layer, t, e, r, cands, bool(self.chat))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TokenMask:
    """One sequence's mask. All arrays (T,), T = len(token_ids)."""

    token_ids: np.ndarray  # int64
    spike: np.ndarray  # bool
    sink: np.ndarray  # bool
    norm_ratio: np.ndarray  # float32, S[t] (at `layer` when set)
    sink_rate: np.ndarray  # float32, NaN where not measured
    attn_mass: np.ndarray  # float32, mean alpha over (layer, head); NaN where not measured
    measured: np.ndarray  # bool: the token's attention mass was computed (a candidate key)

    @property
    def masked(self) -> np.ndarray:
        """(T,) bool: spike or sink, the tokens to drop."""
        return self.spike | self.sink

    @property
    def keep(self) -> np.ndarray:
        return ~self.masked

    def __len__(self) -> int:
        return len(self.token_ids)


FIELDS = ("token_ids", "spike", "sink", "norm_ratio", "sink_rate", "attn_mass", "measured")


def norm_ratios(resid_norm: np.ndarray, layer: int | None) -> np.ndarray:
    """(L, T) residual norms -> (T,) S[t], at `layer` or the peak over layers (core.spike_scores)."""
    return spike_scores(resid_norm if layer is None else resid_norm[layer : layer + 1])


def select_candidates(resid_norm: np.ndarray, settings: MaskSettings) -> np.ndarray:
    """(L, T) -> sorted key positions whose attention mass is measured: the first token, the spike
    tokens, and the `settings.candidates` tokens of largest peak spike score (all when None)."""
    T = resid_norm.shape[1]
    if settings.candidates is None:
        return np.arange(T)
    peak = spike_scores(resid_norm)
    top = np.argsort(-peak, kind="stable")[: settings.candidates]
    spikes = np.flatnonzero(norm_ratios(resid_norm, settings.layer) > settings.threshold)
    return np.unique(np.concatenate([[0], top, spikes]).astype(np.int64))


def mask_from_stats(
    token_ids, resid_norm: np.ndarray, alpha: np.ndarray, positions: np.ndarray, settings: MaskSettings
) -> TokenMask:
    """The mask from measured statistics, by the definitions of sinkhole.analysis.core.

    resid_norm (L, T) ||h_l[t]||; alpha (L, H, C) alpha_{l,h} of the C keys at `positions` (C,)
    (NaN rows: layers that are not attention). Pure: the fast forward, the exact probe and the
    integrations (TransformerLens caches) all end here."""
    T = resid_norm.shape[1]
    ratio = norm_ratios(resid_norm, settings.layer).astype(np.float32)
    rate = np.full(T, np.nan, np.float32)
    mass = np.full(T, np.nan, np.float32)
    measured = np.zeros(T, bool)
    if len(positions):
        rows = attention_rows(alpha)
        a = alpha if rows.all() else alpha[rows]
        rate[positions] = sink_rate(a, settings.epsilon)
        mass[positions] = attention_mass(a)
        measured[positions] = True
    return TokenMask(
        token_ids=np.asarray(token_ids, dtype=np.int64),
        spike=ratio > settings.threshold,
        sink=np.nan_to_num(rate, nan=-1.0) >= settings.min_sink_rate,
        norm_ratio=ratio,
        sink_rate=rate,
        attn_mass=mass,
        measured=measured,
    )


def mask_from_capture(capture, settings: MaskSettings) -> TokenMask:
    """The mask of a probe `Capture` (every token measured): the reference the fast path must equal."""
    T = capture.n_tokens
    return mask_from_stats(capture.token_ids, capture.resid_norm, capture.attn_mass, np.arange(T), settings)


def _fast_batch(probe, encoded: list[list[int]], settings: MaskSettings) -> list[TokenMask] | None:
    """One plain-speed forward (lse attention); None when this model / batch needs the exact probe."""
    from sinkhole.probe.batch import forward_kwargs, left_pad, pad_id
    from sinkhole.probe.lse_attention import LseRecorder, candidate_colsum, lse_recording

    lm = probe.lm
    if not lm.family.uses_interface or lm.device.type != "cpu" or probe.info.learned_sinks:
        return None
    input_ids, valid = left_pad(encoded, pad_id(probe.tokenizer))
    B, T = input_ids.shape
    rec = LseRecorder(probe.info.n_layers, valid)
    kwargs = forward_kwargs(input_ids, valid, lm.device)  # the CPU: no copy
    try:
        with torch.inference_mode(), lse_recording(lm.model, lm.family, rec):
            lm.model(**kwargs)
    except (RuntimeError, ValueError, TypeError, IndexError, AttributeError, NotImplementedError):
        return None  # the exact probe runs it again and reports its failure in one line
    if rec.unsupported or all(k is None for k in rec.kept) or not torch.isfinite(rec.resid_norm).all():
        return None
    starts = [T - len(ids) for ids in encoded]
    norms = [rec.resid_norm[:, b, s:].numpy() for b, s in enumerate(starts)]
    pos = [select_candidates(n, settings) for n in norms]
    C = max(len(p) for p in pos)
    cand = torch.stack([torch.tensor(np.pad(p + s, (0, C - len(p)), mode="edge")) for p, s in zip(pos, starts)])
    per_layer = []
    with torch.inference_mode():
        for kept in rec.kept:
            if kept is None:
                per_layer.append(None)
                continue
            q, k, lse, mask, scaling = kept
            per_layer.append(candidate_colsum(q, k, lse, mask, scaling, cand, valid))  # (B, H, C)
    rec.kept = []  # the batch's queries and keys are freed here
    H = max(c.shape[1] for c in per_layer if c is not None)
    out = []
    for b, ids in enumerate(encoded):
        n, c = len(ids), len(pos[b])
        colsum = np.full((len(per_layer), H, c), np.nan, np.float32)
        for l, cs in enumerate(per_layer):
            if cs is not None:
                colsum[l, : cs.shape[1]] = cs[b, :, :c].numpy()
        alpha = colsum / (n - pos[b])[None, None, :]  # queries t >= k: n - k of them
        out.append(mask_from_stats(ids, norms[b], alpha, pos[b], settings))
    return out


def mask_batch(probe, encoded: list[list[int]], settings: MaskSettings) -> list[TokenMask]:
    """Masks of token id sequences, one forward: the fast path, else the exact probe."""
    fast = None if settings.candidates is None else _fast_batch(probe, encoded, settings)
    if fast is not None:
        return fast
    return [mask_from_capture(c, settings) for c in probe.run_batch(encoded)]


def as_probe(model_or_probe, tokenizer=None):
    """A ModelProbe from a probe, a LoadedModel, a bundled name / path, or a transformers model."""
    from sinkhole.probe.loading import LoadedModel
    from sinkhole.probe.probe import ModelProbe

    if isinstance(model_or_probe, ModelProbe):
        return model_or_probe
    if isinstance(model_or_probe, torch.nn.Module):
        return ModelProbe(LoadedModel.wrap(model_or_probe, tokenizer))
    return ModelProbe(model_or_probe)


def iter_masks(
    probe,
    prompts: Sequence[str | Sequence[int]],
    settings: MaskSettings,
    max_batch_tokens: int = 4096,
    max_batch: int = 32,
) -> Iterator[list[tuple[int, TokenMask]]]:
    """(index into prompts, mask) pairs, one list per batch; batches planned as eval plans them."""
    from sinkhole.eval.runner import plan_batches

    settings = settings.checked(probe.info.n_layers)
    encoded = encode_texts(probe, prompts, settings)
    for batch in plan_batches([len(ids) for ids in encoded], max_batch_tokens, max_batch):
        yield list(zip(batch, mask_batch(probe, [encoded[i] for i in batch], settings)))


def encode_texts(probe, prompts: Sequence[str | Sequence[int]], settings: MaskSettings) -> list[list[int]]:
    """Token ids of each text (ids pass through), each checked against the model's context."""
    encoded = [probe.encode(p, settings.chat)[0] for p in prompts]
    limit = probe.info.max_context
    for i, ids in enumerate(encoded):
        if limit and len(ids) > limit:
            raise SinkholeError(f"text {i} is {len(ids)} tokens, longer than {probe.info.name}'s context of {limit}")
    return encoded


def token_mask(
    model_or_probe,
    ids_or_texts,
    layer: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    epsilon: float = DEFAULT_EPSILON,
    min_sink_rate: float = DEFAULT_MIN_SINK_RATE,
    candidates: int | None = DEFAULT_CANDIDATES,
    chat: bool = False,
    tokenizer=None,
    max_batch_tokens: int = 4096,
    max_batch: int = 32,
) -> TokenMask | list[TokenMask]:
    """Spike / sink / norm-ratio mask of a text or token id list (one TokenMask), or of a list of them
    (a list, in input order). model_or_probe: a ModelProbe, LoadedModel, bundled name or path, or a
    transformers model (then `tokenizer` for texts). Definitions and cost: the module docstring."""
    if isinstance(ids_or_texts, np.ndarray | torch.Tensor):  # 1-D: one sequence; 2-D: rows
        ids_or_texts = ids_or_texts.tolist()
    single = isinstance(ids_or_texts, str) or (
        isinstance(ids_or_texts, Sequence)
        and len(ids_or_texts) > 0
        and not isinstance(ids_or_texts[0], str | Sequence | np.ndarray | torch.Tensor)
    )
    items = [ids_or_texts] if single else list(ids_or_texts) if _iterable(ids_or_texts) else None
    if not items:
        raise SinkholeError("token_mask needs a text, a list of token ids, or a non-empty list of either")
    items = [p.tolist() if isinstance(p, np.ndarray | torch.Tensor) else p for p in items]
    probe = as_probe(model_or_probe, tokenizer)
    settings = MaskSettings(layer, threshold, epsilon, min_sink_rate, candidates, chat)
    out: list[TokenMask | None] = [None] * len(items)
    for batch in iter_masks(probe, items, settings, max_batch_tokens, max_batch):
        for i, m in batch:
            out[i] = m
    return out[0] if single else out


def _iterable(x) -> bool:
    return hasattr(x, "__iter__") and not isinstance(x, bytes | dict)
