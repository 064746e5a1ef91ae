"""Calibration statistics of every decoder Linear's input: the forward that collects them.

`collect_stats` runs the calibration sequences one at a time (batch 1, no padding: every position
is a real token) with one pre-forward hook per `nn.Linear` inside the decoder layers, installed by
`linear_input_hooks` over `sinkhole.probe.hooks.hooked` and removed in `finally`. Each hook folds
its input into the running reductions of `sinkhole.quant.stats` (definitions there), so no
activation is ever stored.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn

from sinkhole.probe.hooks import hooked
from sinkhole.quant.stats import CalibrationStats, LinearInputStats, decoder_linears, reduce_rows


@contextmanager
def linear_input_hooks(model: nn.Module, family, stats: dict[str, LinearInputStats], state: dict) -> Iterator[None]:
    """Fold every decoder Linear's input into `stats[name]` while inside; hooks removed in `finally`.

    `state` carries what the hooks need about the current sequence: `token_ids` and `skip` (rows to ignore).
    """
    linears = decoder_linears(model, family)

    memo: dict = {}  # q/k/v (and gate/up) read the same tensor: reduce it once per forward

    def make(name: str):
        def hook(module, args):
            x = args[0]  # (1, T, C)
            skip = state.get("skip", 0)
            if memo.get("x") is not x:  # holding x keeps its memory from being reused by another tensor
                memo["x"], memo["r"], memo["first"] = x, reduce_rows(x[0, skip:]), name
            stats[name].input_group = memo["first"]
            stats[name].fold(memo["r"], token_ids=state.get("token_ids"), offset=skip)

        return hook

    for name, (layer, lin) in linears.items():
        if name not in stats:
            stats[name] = LinearInputStats(name, layer, name.rpartition(".")[2], lin.in_features)
    try:
        with hooked(pre=[(lin, make(name)) for name, (_, lin) in linears.items()]):
            yield
    finally:
        memo.clear()  # drop the last input tensor


@torch.no_grad()
def collect_stats(
    lm, sequences: Sequence[Sequence[int]], skip_positions: int = 0, source: str = "", progress=None
) -> CalibrationStats:
    """Run `sequences` (token id lists) one by one through `lm` (a LoadedModel) and collect statistics.

    `skip_positions`: rows 0..skip-1 of every sequence are left out (a prefix already in the KV cache).
    """
    model, family = lm.model, lm.family
    stats: dict[str, LinearInputStats] = {}
    state: dict = {"skip": skip_positions}
    n_tokens = 0
    with linear_input_hooks(model, family, stats, state):
        for i, ids in enumerate(sequences):
            state["token_ids"] = list(ids)
            model(torch.tensor([list(ids)], device=lm.device), use_cache=False)
            n_tokens += max(len(ids) - skip_positions, 0)
            if progress:
                progress(i + 1, len(sequences))
    cfg = model.config
    return CalibrationStats(
        model={
            "name": lm.name,
            "architecture": getattr(cfg, "model_type", ""),
            "weights_id": lm.weights_id,
            "n_layers": getattr(cfg, "num_hidden_layers", None),
        },
        modules=stats,
        n_sequences=len(sequences),
        n_tokens=n_tokens,
        source=source,
        skip_positions=skip_positions,
        first_token_ids=[int(s[0]) for s in sequences if len(s)],
    )
