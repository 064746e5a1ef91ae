"""Assemble `sinkhole mechanism`'s typed `MechanismResult` (sinkhole.results.mechanism): two passes
over a prompt set, then the pure analyses, which return the result's sections.

Pass 1 is the ordinary probe (`ModelProbe.run_batch`) and the core `analyze` of every prompt:
it names the target tokens, their spike channels, the step-up layer and the sink tokens. Pass 2
(`gather`) re-runs the batch and keeps only the vectors those analyses need.

Targets: the core's spike tokens (score > threshold). When no prompt has one (a model without a
relative spike, e.g. one whose sandwich norms keep every token large), each prompt's
highest-scoring token is analysed instead and `targets.fallback` is true.
Step-up layer s: the most common first core step-up layer among targets; when no target has one,
the layer whose output raises the targets' mean residual norm the most.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from sinkhole.analysis.core import (
    DEFAULT_EPSILON,
    DEFAULT_MIN_SINK_RATE,
    DEFAULT_THRESHOLD,
    STEP_FRACTION,
    analyze,
    peak_norm,
    prompt_spike_score,
    spike_token,
    top_value,
)
from sinkhole.analysis.mechanism import amplifier as amp
from sinkhole.analysis.mechanism import channels as chn
from sinkhole.analysis.mechanism import lifecycle as lc
from sinkhole.analysis.mechanism.normalization import normalization
from sinkhole.analysis.mechanism.sink_keys import sink_keys
from sinkhole.experiments.gather import Plan, gather
from sinkhole.experiments.interventions import interventions, text_ids
from sinkhole.results.mechanism import (
    Interventions,
    LifecycleToken,
    MechanismResult,
    MechanismSettings,
    MechanismSummary,
    NotApplicable,
    Targets,
    TargetToken,
)
from sinkhole.results.report import MAPS_MAX_LEN, SpikeToken

DEFAULT_PROMPTS = [
    "Explain the theory of relativity in simple terms.",
    "Write a haiku about autumn rain.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Give me three tips for learning to play the guitar.",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "How do vaccines train the immune system?",
    "Write a Python function that reverses a linked list.",
    "What causes the seasons on Earth?",
    "List five healthy breakfast ideas.",
    "Why is the sky blue during the day and red at sunset?",
    "Describe how a bill becomes a law in the United States.",
    "What is the difference between a virus and a bacterium?",
    "Suggest a name for a coffee shop run by cats.",
    "How does compound interest work? Give an example.",
    "Explain what a black hole is to a ten-year-old.",
]


@dataclass
class MechanismConfig:
    threshold: float = DEFAULT_THRESHOLD
    epsilon: float = DEFAULT_EPSILON
    min_sink_rate: float = DEFAULT_MIN_SINK_RATE
    fraction: float = STEP_FRACTION
    n_others: int = 128  # sampled non-spike, non-sink tokens (keys, queries, norm baselines)
    trace_tokens: int = 2  # spike tokens whose full block-by-block top-3 trace goes into the JSON
    interventions: bool = True
    text: str | None = None  # intervention text; None = the pydoc topics
    text_tokens: int = 1024
    seed: int = 0


def _targets(reports, captures, threshold) -> tuple[list[tuple[int, int, int, SpikeToken]], bool]:
    """[(prompt row, position, token id, core spike row)] and whether the fallback was used."""
    out = [
        (b, s.position, captures[b].token_ids[s.position], s) for b, r in enumerate(reports) for s in r.spike_tokens
    ]
    if out:
        return out, False
    for b, (r, c) in enumerate(zip(reports, captures)):
        scores = np.asarray(r.spikes.per_token_score)
        s = spike_token(c, int(scores.argmax()), scores, peak_norm(c.resid_norm), threshold)
        s.channels = s.channels or [s.channel]  # below the threshold: at least its top channel
        out.append((b, s.position, c.token_ids[s.position], s))
    return out, True


def _step_up_layer(targets, captures) -> int:
    firsts = [s.step_up_layers[0] for _, _, _, s in targets if s.step_up_layers]
    if firsts:
        return Counter(firsts).most_common(1)[0][0]
    rise = np.mean(
        [
            np.diff(np.concatenate([[captures[b].embed_norm[t]], captures[b].resid_norm[:, t]]))
            for b, t, _, _ in targets
        ],
        axis=0,
    )
    return int(rise.argmax())


def _plateau(s: SpikeToken) -> tuple[int | None, int | None]:
    up = s.step_up_layers
    rise = up[0] if up else None
    downs = [l for l in s.step_down_layers if rise is None or l > rise]
    return rise, (downs[-1] if downs else None)


def summary(reports, captures, step_up: int) -> MechanismSummary:
    """The side-by-side numbers, averaged over prompts (see docs/mechanism.md); `spike_score` is the
    mean of each prompt's `prompt_spike_score` (max_t S[t])."""
    rows = []
    for r, c in zip(reports, captures):
        scores = np.asarray(r.spikes.per_token_score)
        t = int(scores.argmax())
        value, layer, _ = top_value(c.resid_top_channels, c.resid_top_values, t)
        typical = float(np.median(np.abs(c.resid_top_values[layer, :, 0])))
        top = r.sinks.top
        rows.append(
            (
                prompt_spike_score(scores),
                abs(value) / max(typical, 1e-30),
                top.sink_rate,
                top.attn_mass,
                len(r.spike_tokens),
                len(r.sink_tokens),
                r.kv.sink_attention_share,
            )
        )
    a = np.array(rows, dtype=np.float64)
    keys = [
        "spike_score",
        "top_abs_over_median",
        "top_sink_rate",
        "top_sink_attn_mass",
        "n_spike_tokens",
        "n_sink_tokens",
        "sink_attention_share",
    ]
    return MechanismSummary(**{k: float(a[:, i].mean()) for i, k in enumerate(keys)}, step_up_layer=step_up)


def run_mechanism(
    probe, prompts: list, chat: bool | None = None, cfg: MechanismConfig | None = None, status=lambda m: None
) -> tuple[MechanismResult, list]:
    """The typed result (its `example`: prompt 0's report) and the core reports of every prompt."""
    cfg = cfg or MechanismConfig()
    lm = probe.lm
    status(f"pass 1: probing {len(prompts)} prompts")
    captures = probe.run_batch(prompts, chat=chat)
    reports = [analyze(c, cfg.threshold, cfg.epsilon, cfg.min_sink_rate) for c in captures]
    seqs = [c.token_ids for c in captures]
    T = max(len(s) for s in seqs)
    pad_off = [T - len(s) for s in seqs]
    targets, fallback = _targets(reports, captures, cfg.threshold)
    L = probe.info.n_layers
    step_up = _step_up_layer(targets, captures)
    main = Counter(s.channel for *_, s in targets).most_common(1)[0][0]
    channels = chn.pool_channels([s.channels for *_, s in targets], main) or [main]
    sinks = [(b, s.position) for b, r in enumerate(reports) for s in (r.sink_tokens or [r.sinks.top])]
    taken = {(b, t) for b, t, _, _ in targets} | set(sinks)
    pool = [(b, t) for b, s in enumerate(seqs) for t in range(len(s)) if (b, t) not in taken]
    rng = np.random.default_rng(cfg.seed)
    others = [pool[i] for i in sorted(rng.choice(len(pool), size=min(cfg.n_others, len(pool)), replace=False))]

    def padded(pos):
        return [(b, t + pad_off[b]) for b, t in pos]

    plan = Plan(
        spikes=padded([(b, t) for b, t, _, _ in targets]),
        channels=channels,
        step_up=step_up,
        sinks=padded(sinks),
        others=padded(others),
    )
    status(f"pass 2: gathering (step-up layer {step_up}, channels {channels})")
    g = gather(lm, seqs, plan)

    # 1. lifecycle, block by block
    per_token = []
    for i, (b, t, tid, s) in enumerate(targets):
        d = lc.lifecycle(
            g.embed[i], g.attn_out[:, i], g.ffn_out[:, i], g.layer_out[:, i], cfg.fraction, trace=i < cfg.trace_tokens
        )
        per_token.append(
            LifecycleToken(
                prompt=b,
                position=t,
                token_id=int(tid),
                text=s.text,
                score=s.score,
                core_step_up_layers=s.step_up_layers,
                core_step_down_layers=s.step_down_layers,
                **vars(d),
            )
        )
    lifecycle = lc.summarize(per_token, cfg.fraction)

    # 2. spike channels along the plateau
    plateaus = [chn.plateau_layers(*_plateau(s), L) for *_, s in targets]
    channel_info = chn.channel_profile(g.layer_out[:, :, channels], plateaus, channels)

    # 3-4. activation regime and the quadratic amplifier at the step-up FFN
    spike_mask = np.zeros_like(g.valid)
    for b, t in plan.spikes:
        spike_mask[b, t] = True
    fam = lm.family
    if fam.swiglu and g.ffn_in is not None:
        layer = fam.decoder_layers(lm.model)[step_up]
        mlp = fam.part(layer, fam.mlp)
        w = [fam.part(mlp, n).weight.detach().float().cpu() for n in (fam.gate_proj, fam.up_proj, fam.down_proj)]
        activation = amp.activation_regime(g.act_cos, g.act_ratio, spike_mask, g.valid, g.activation)
        amplifier = amp.amplifier(*w, channels, g.ffn_in, g.mlp_chan, spike_mask, g.valid)
        # What reaches the residual over what the MLP computed, at the spike channels of the targets:
        # exactly 1 for pre-norm; a sandwich model's post-FFN norm rescales (and may amplify) it.
        amplifier.post_block_gain = amp.post_block_gain(g.ffn_out[step_up][:, channels], g.mlp_chan[spike_mask])
    else:
        why = (
            f"not applicable: {fam.name}'s FFN has no separate gate / up / down projections "
            "(a fused or mixture-of-experts FFN, or no gated FFN; the quadratic amplifier is a SwiGLU property)"
        )
        activation, amplifier = NotApplicable(reason=why), NotApplicable(reason=why)

    # 5. normalization
    if g.norm_before is not None:
        norm = normalization(
            g.norm_before,
            g.norm_after,
            len(targets),
            channels,
            rows=[b for b, *_ in targets],
            ids=[int(tid) for _, _, tid, _ in targets],
        )
    else:
        norm = NotApplicable(reason=f"not applicable: no norm feeds {fam.name}'s attention ({fam.norm_style}-norm)")

    # 6. sink keys and sink heads on the attention layers: per head, alpha summed over each prompt's
    # sink tokens, mean over prompts
    att = [l for l in range(L) if np.isfinite(captures[0].attn_mass[l]).any()]
    mass = np.mean([sum(c.attn_mass[:, :, t] for bb, t in sinks if bb == b) for b, c in enumerate(captures)], axis=0)
    keys = sink_keys(g.sink_keys[att], g.other_keys[att], g.other_queries[att], mass[att], cfg.epsilon, cfg.seed)
    if len(att) != L:
        keys.layers = att  # the rows of per_layer_* are these (attention) layers
        keys.sink_heads = [[att[l], h] for l, h in keys.sink_heads]

    out = MechanismResult(
        config=MechanismSettings(
            n_prompts=len(prompts),
            chat=captures[0].chat,
            threshold=cfg.threshold,
            epsilon=cfg.epsilon,
            min_sink_rate=cfg.min_sink_rate,
            step_fraction=cfg.fraction,
        ),
        targets=Targets(
            fallback=fallback,
            n=len(targets),
            step_up_layer=step_up,
            spike_channels=channels,
            # mean of h_s at the spike channels over the targets (the interventions' "mean" values)
            step_up_mean_values=[float(v) for v in g.layer_out[step_up][:, channels].mean(0)],
            tokens=[TargetToken(prompt=b, position=t, token_id=int(tid), text=s.text) for b, t, tid, s in targets],
        ),
        summary=summary(reports, captures, step_up),
        lifecycle=lifecycle,
        channels=channel_info,
        activation=activation,
        amplifier=amplifier,
        normalization=norm,
        sink_keys=keys,
        example=reports[0],
    )
    if cfg.interventions:
        out.interventions = run_interventions(
            probe, cfg, step_up, channels, out.targets.step_up_mean_values, status=status
        )
    return out, reports


def run_interventions(
    probe, cfg: MechanismConfig, layer: int, channels: list[int], mean_values, status=lambda m: None
) -> Interventions:
    """Perplexity on the fixed text with the spike / sink taken away (see interventions.py)."""
    lm = probe.lm
    ids = text_ids(lm.tokenizer, cfg.text, cfg.text_tokens)
    status(f"interventions: finding the spike and sink tokens of the text ({len(ids)} tokens)")
    c = probe.run(ids)
    r = analyze(c, cfg.threshold, cfg.epsilon, cfg.min_sink_rate)
    spikes = [s.position for s in r.spike_tokens]
    fallback = not spikes  # same rule as the prompts' targets: no spike token -> the top-scoring token
    if fallback:
        spikes = [int(np.argmax(r.spikes.per_token_score))]
    sinks = [s.position for s in r.sink_tokens] or [r.sinks.top.position]
    out = interventions(
        lm, ids, layer, spikes, channels, [float(v) for v in mean_values], sinks, cfg.seed, status=status
    )
    out.spike_fallback = fallback
    out.text = "pydoc_data.topics (sorted keys, joined)" if cfg.text is None else "user file"
    return out


def page_capture(probe, prompt, chat, maps_max_len: int = MAPS_MAX_LEN):
    """The Capture the page draws prompt 0 from (per-head attention, channels): that prompt run once
    more alone, with full maps up to `maps_max_len` tokens (batched and alone give the same numbers;
    tests/test_probe.py). The probe's own setting is restored afterwards."""
    kept = probe.maps_max_len
    probe.maps_max_len = maps_max_len
    try:
        return probe.run(prompt, chat=chat)
    finally:
        probe.maps_max_len = kept


def add_page_detail(result, probe, prompt, chat, maps_max_len: int = MAPS_MAX_LEN) -> None:
    """Give the example report the `detail` the page draws: the batch kept no attention maps, so its
    per-head figures come from `page_capture` (the report's numbers stay those of the batch)."""
    from sinkhole.analysis.detail import detail

    result.example.detail = detail(page_capture(probe, prompt, chat, maps_max_len), result.example.spikes.tokens)
