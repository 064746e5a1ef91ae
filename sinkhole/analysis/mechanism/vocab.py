"""Vocabulary sweep (paper Table 2): which tokens become spike tokens when they open the sequence.
Pure: the scores and the summary (the forwards are `sinkhole.experiments.vocab_sweep`).

Rule. Every token id v in [0, vocab_size) is fed alone: the whole input is the one token at
position 0 (no BOS, no chat template). Its peak norm is N(v) = max_l ||h_l||_2 over decoder layer
outputs. A median over the vocabulary cannot be the reference (on SmolLM2 nearly every token
spikes at position 0, so the median would itself be a spike); the reference is the ordinary
in-context token instead:

    ref = median over positions t >= 1 of max_l ||h_l[t]||, on a fixed text (the first 256 tokens of
          the pydoc topics, the same text the interventions use, special tokens added);
    score(v) = N(v) / ref;  v is a spike token when score(v) > threshold (10, the core's).

Reported: the share of spike tokens, score percentiles, and the exceptions: the tokens on the
minority side (the non-spiking ones when most spike, else the spiking ones), lowest/highest first.
The score against the vocabulary median is reported too, for comparison.

Names: `vocab_spike_scores` are these per-vocabulary-token scores (JSON: `score_percentiles`,
`exceptions[].score`); they are not the core's per-token `spike_scores` S[t] of one prompt, nor a
prompt's `prompt_spike_score` (max_t S[t], the eval rows' `spike_score`).
"""

from __future__ import annotations

import numpy as np

from sinkhole.results.mechanism import VocabException, VocabSweep


def vocab_spike_scores(peaks: np.ndarray, ref: float) -> np.ndarray:
    """(V,) peak norms of tokens fed alone -> (V,) score(v) = N(v) / ref (ref: the in-context reference norm)."""
    return peaks / max(ref, 1e-30)


def summarize(
    token_ids: np.ndarray, peaks: np.ndarray, ref: float, decode, threshold: float = 10.0, max_listed: int = 50
) -> VocabSweep:
    """The sweep's shares, percentiles and exceptions; decode(id) -> text. The run's own numbers
    (vocab_size, seconds, ...) are the caller's (sinkhole.experiments.vocab_sweep)."""
    score = vocab_spike_scores(peaks, ref)
    spike = score > threshold
    share = float(spike.mean()) if len(spike) else 0.0
    minority = ~spike if share >= 0.5 else spike
    idx = np.flatnonzero(minority)
    idx = idx[np.argsort(score[idx])] if share >= 0.5 else idx[np.argsort(-score[idx])]
    vmed = float(np.median(peaks)) if len(peaks) else 0.0
    return VocabSweep(
        n_tokens=int(len(token_ids)),
        threshold=threshold,
        reference_norm=ref,
        n_spike=int(spike.sum()),
        spike_share=share,
        score_percentiles={str(p): float(np.percentile(score, p)) for p in (0, 1, 5, 25, 50, 75, 95, 99, 100)},
        exceptions_are="non-spiking tokens" if share >= 0.5 else "spiking tokens",
        n_exceptions=int(minority.sum()),
        exceptions=[
            VocabException(id=int(token_ids[i]), text=decode(int(token_ids[i])), score=float(score[i]))
            for i in idx[:max_listed]
        ],
        vocab_median_norm=vmed,
        n_over_threshold_vs_vocab_median=int((peaks > threshold * vmed).sum()),
    )
