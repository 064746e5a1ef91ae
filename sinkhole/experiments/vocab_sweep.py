"""Vocabulary sweep (paper Table 2), the forwards: every token fed alone, and the reference text.

The rule, the scores and the summary are pure and live in `sinkhole.analysis.mechanism.vocab`;
this module runs the model for them: `sweep` gives each token's peak norm N(v) = max_l ||h_l||_2
alone at position 0 (no BOS, no chat template), `reference_norm` the median peak norm of an
ordinary in-context token on the reference text (the first REFERENCE_TOKENS tokens of the pydoc
topics, the text the interventions use, special tokens added).

Batching: sequences of length 1 need no attention beyond v_proj/o_proj, so the batch is simply
many tokens at once; only a (B,) running maximum is kept per batch (`peak_norm_hooks`, over
`sinkhole.probe.hooks.hooked`). Under a launcher the ranks share those batches (sinkhole.distributed).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch

from sinkhole.analysis.mechanism.vocab import summarize
from sinkhole.probe.hooks import first_tensor, hooked
from sinkhole.probe.loading import LoadedModel
from sinkhole.results.mechanism import VocabSweep

REFERENCE_TOKENS = 256


@contextmanager
def peak_norm_hooks(lm: LoadedModel, store: dict):
    """Keep store["peak"] = running max over decoder layers of ||h_l|| (B, T), float32."""

    def hook(module, inputs, output):
        n = torch.linalg.vector_norm(first_tensor(output).float(), dim=-1)
        store["peak"] = n if store.get("peak") is None else torch.maximum(store["peak"], n)

    with hooked([(layer, hook) for layer in lm.family.decoder_layers(lm.model)]):
        yield store


def peak_norms(lm: LoadedModel, input_ids: torch.Tensor) -> np.ndarray:
    """(B, T) ids -> (B, T) max over layers of ||h_l||. Runs the decoder only (no logits)."""
    store: dict = {"peak": None}
    with torch.inference_mode(), peak_norm_hooks(lm, store):
        lm.model.get_decoder()(input_ids=input_ids.to(lm.device), use_cache=False)
    return store["peak"].cpu().numpy()


def reference_norm(lm: LoadedModel, ids: list[int]) -> float:
    """Median over positions >= 1 of the peak norm of `ids` run as one sequence."""
    return float(np.median(peak_norms(lm, torch.tensor([ids]))[0, 1:]))


def sweep(lm: LoadedModel, token_ids: np.ndarray | None = None, batch_size: int = 1024, progress=None) -> np.ndarray:
    """Peak norm of each token fed alone; token_ids default to the whole embedding table."""
    if token_ids is None:
        token_ids = np.arange(lm.model.get_input_embeddings().num_embeddings)
    out = np.empty(len(token_ids), dtype=np.float32)
    for s in range(0, len(token_ids), batch_size):
        batch = torch.as_tensor(token_ids[s : s + batch_size], dtype=torch.long)[:, None]  # (B, 1)
        out[s : s + len(batch)] = peak_norms(lm, batch)[:, 0]
        if progress is not None:
            progress(len(batch))
    return out


def vocab_sweep(
    lm: LoadedModel,
    ref_ids: list[int],
    threshold: float = 10.0,
    batch_size: int = 1024,
    sample: int | None = None,
    seed: int = 0,
    progress=None,
    world=None,
) -> VocabSweep | None:
    """Run the sweep (all tokens, or a fixed random `sample` of them) and summarize it.

    world (sinkhole.distributed, default: this process alone): the ranks share the batches of
    `batch_size` tokens (the same batches as one process, so the same numbers); rank 0 gathers the
    peak norms and returns the result, the other ranks None. progress(n) counts all ranks' tokens."""
    from sinkhole.distributed import World

    world = world or World()
    V = lm.model.get_input_embeddings().num_embeddings
    ids = np.arange(V)
    if sample is not None and sample < V:
        ids = np.sort(np.random.default_rng(seed).choice(V, size=sample, replace=False))
    starts = list(range(0, len(ids), batch_size))
    mine = [starts[k] for k in world.shard([min(batch_size, len(ids) - s) for s in starts])]
    tally = world.tally(progress)
    t0 = time.perf_counter()
    parts = {}
    for s in mine:
        parts[s] = sweep(lm, ids[s : s + batch_size], batch_size, tally.step)
    tally.wait()
    seconds = time.perf_counter() - t0
    gathered = world.gather(parts)
    if not world.is_main:
        return None
    peaks = np.empty(len(ids), dtype=np.float32)
    for part in gathered:
        for s, values in part.items():
            peaks[s : s + len(values)] = values
    ref = reference_norm(lm, ref_ids[:REFERENCE_TOKENS])
    tok = lm.tokenizer

    def decode(i: int) -> str:
        return tok.decode([i]) if hasattr(tok, "decode") else str(i)

    out = summarize(ids, peaks, ref, decode, threshold)
    out.vocab_size = int(V)
    out.sampled = bool(len(ids) < V)
    out.seconds = seconds
    out.tokens_per_second = len(ids) / max(seconds, 1e-9)
    out.dtype = str(lm.dtype).replace("torch.", "")
    return out
