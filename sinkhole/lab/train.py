"""The training loop: AdamW on stream batches, log-spaced checkpoints, each probed with sinkhole's own probe.

What a checkpoint measures, field by field (and why the checkpoints are log-spaced), is written once in
`sinkhole.results.lab.DEFINITIONS`, beside the `Checkpoint` type the lab writes and the page shows.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sinkhole.analysis import core
from sinkhole.lab.data import IdTokenizer, TokenStream
from sinkhole.results.lab import Checkpoint


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup: int = 20
    seed: int = 0
    n_checkpoints: int = 10
    probe_batch: int = 8  # held-out sequences probed at each checkpoint
    loss_from: float = 0.0  # the loss counts target positions t >= loss_from x seq_len only (0: all)

    def to_dict(self) -> dict:
        return asdict(self)


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """Step 0 and about n - 1 log-spaced steps in [1, steps], the last one included."""
    if n < 3 or steps < 1:  # geomspace of one point is its start: n = 2 would end at step 1
        return [0, steps] if steps else [0]
    ks = np.unique(np.round(np.geomspace(1, steps, n - 1)).astype(int))
    return [0] + [int(k) for k in ks]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def position_loss(logits: torch.Tensor, ids: torch.Tensor, loss_from: float) -> torch.Tensor:
    """Next-token cross-entropy on target positions t >= max(1, round(loss_from x T)) only.

    logits (B, T, V) at position t predict ids[:, t + 1]. The paper's manipulation (which positions
    the loss sees) without changing the sequences the model reads."""
    t0 = max(1, round(loss_from * ids.shape[1]))
    return F.cross_entropy(logits[:, t0 - 1 : -1].reshape(-1, logits.shape[-1]).float(), ids[:, t0:].reshape(-1))


def probe_checkpoint(
    model,
    ids: torch.Tensor,
    stream: TokenStream,
    step: int,
    loss: float | None,
    threshold: float = core.DEFAULT_THRESHOLD,
    epsilon: float = core.DEFAULT_EPSILON,
    min_sink_rate: float = core.DEFAULT_MIN_SINK_RATE,
) -> Checkpoint:
    """Probe a copy of `model` on ids (B, T) and summarise position 0 (sinkhole.results.lab.DEFINITIONS)."""
    from sinkhole.probe.loading import LoadedModel
    from sinkhole.probe.probe import ModelProbe

    frozen = copy.deepcopy(model)
    lm = LoadedModel.wrap(frozen, IdTokenizer(stream.cfg.n_triggers, text=stream.cfg.task == "text"), name="lab")
    with torch.no_grad():
        logits = frozen(ids).logits.float()
    eval_loss = float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)))
    hit = stream.predictable(ids)[:, 1:]
    correct = logits[:, :-1].argmax(-1) == ids[:, 1:]
    copy_acc = float(correct[hit].float().mean()) if bool(hit.any()) else None
    with warnings.catch_warnings():
        # sigmoid / softpick attention bypass the interface on purpose: the probe's eager fallback is what we want.
        warnings.filterwarnings("ignore", message=".*bypasses transformers' AttentionInterface.*")
        captures = ModelProbe(lm).run_batch([row.tolist() for row in ids])
    reports = [core.analyze(c, threshold, epsilon, min_sink_rate) for c in captures]
    alpha = np.stack([c.attn_mass[:, :, 0] for c in captures])  # (B, L, H)
    colsum = np.stack([c.attn_colsum for c in captures])  # (B, L, H, T)
    T = ids.shape[1]
    norm = np.stack([c.resid_norm for c in captures])  # (B, L, T)
    c0 = captures[0]
    value, layer, channel = core.top_value(c0.resid_top_channels, c0.resid_top_values, 0)
    typical = float(np.median(np.abs(c0.resid_top_values[layer, :, 0])))
    return Checkpoint(
        step=step,
        loss=loss,
        eval_loss=eval_loss,
        copy_accuracy=copy_acc,
        sink_mass=float(alpha.mean()),
        sink_rate=float((alpha > epsilon).mean()),
        sink_detected=float(np.mean([any(s.position == 0 for s in r.sinks.tokens) for r in reports])),
        first_share=float(colsum[..., 0].sum() / max(colsum.sum(), 1e-30)),
        attn_total=float(colsum.sum() / (colsum.shape[0] * colsum.shape[1] * colsum.shape[2] * T)),
        spike_score=float(np.mean([r.spikes.per_token_score[0] for r in reports])),
        spike_score_max=float(np.mean([core.prompt_spike_score(r.spikes.per_token_score) for r in reports])),
        spike_detected=float(np.mean([any(s.position == 0 for s in r.spikes.tokens) for r in reports])),
        top_value=value,
        top_layer=layer,
        top_channel=channel,
        top_ratio=abs(value) / max(typical, 1e-30),
        mass_by_layer=alpha.mean(axis=(0, 2)).tolist(),
        norm_ratio_by_layer=(norm[:, :, 0] / np.median(norm, axis=2)).mean(axis=0).tolist(),
        heads=alpha.mean(axis=0).tolist(),
    )


def train(
    model,
    stream: TokenStream,
    cfg: TrainConfig,
    probe_ids: torch.Tensor,
    on_checkpoint=None,
    progress=None,
    **probe_kw,
) -> list[Checkpoint]:
    """Train `model` in place on stream batches 0..steps-1, probing at `checkpoint_steps`.

    on_checkpoint(checkpoint, model) is called after each probe (to save results or weights);
    progress(n) after each optimizer step.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    marks = set(checkpoint_steps(cfg.steps, cfg.n_checkpoints))
    out: list[Checkpoint] = []
    losses: list[float] = []

    def mark(step: int) -> None:
        ck = probe_checkpoint(model, probe_ids, stream, step, float(np.mean(losses)) if losses else None, **probe_kw)
        losses.clear()
        out.append(ck)
        if on_checkpoint is not None:
            on_checkpoint(ck, model)

    model.train()
    for step in range(cfg.steps + 1):
        if step in marks:
            mark(step)
        if step == cfg.steps:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        ids = stream.batch(step, cfg.batch_size)
        loss = position_loss(model(ids).logits, ids, cfg.loss_from)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(1)
    return out
