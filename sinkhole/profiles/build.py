"""A model's `SinkProfile` from the per-prompt rows of an eval over a prompt suite (`build_profile`,
pure). `sinkhole.experiments.detector.SinkDetector` runs the eval and calls it:

    profile = SinkDetector("smollm2-135m").detect()      # the built-in suite, chat as the model is used
    profile.save("smollm2.json")

How each part of the profile is decided from the per-prompt rows of `sinkhole.eval.runner`
(`EvalRow`s, sinkhole.results.eval; dicts of the row's keys are typed first; every per-prompt number
is `sinkhole.analysis.core.analyze`'s):
- sink_rule.positions: positions that are sink tokens in >= `position_share` (0.9) of the prompts
  long enough to have them (and such prompts are at least half the suite).
- sink_rule.token_texts: token texts, seen >= `min_text_count` (5) times outside those positions,
  that are sink tokens in >= `text_share` (0.9) of their occurrences: they sink wherever they appear.
- sink_tokens: every position that is a sink in >= 5% of prompts (its most common text, mean
  attention mass and sink rate over the prompts where it sinks, frequency = share of prompts), then
  the rule's token texts (position null, frequency = share of their occurrences that sink).
- spike_channels: channels in >= 10% of the prompts that have spike tokens, with the median of
  their signed values at the spike's top layer (`typical_value`) and that share (`frequency`).
- step_up_layers / step_down_layers: layers in >= `layer_share` (0.5) of all spike tokens' step lists.
- sink_heads: (layer, head) pairs whose mass on the top sink exceeds epsilon in >= `head_share` (0.5)
  of prompts.
- pinned_slots: 1 + the last rule position (StreamingLLM pins the first slots of the cache, so
  pinning up to the last always-sink position keeps them all); 4, StreamingLLM's default, when no
  position sinks reliably.

Chat: by default the profile is made as the model is used, through its chat template when its
tokenizer has one (SmolLM2-Instruct), plain text otherwise (Gemma-3-270M); `settings.chat` records it.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from sinkhole.errors import SinkholeError
from sinkhole.results.eval import EvalRow, EvalSink, as_rows
from sinkhole.results.sink_profile import SinkProfile

DEFAULT_PINNED_SLOTS = 4  # StreamingLLM's start_size, when no position sinks reliably
POSITION_SHARE, TEXT_SHARE, MIN_TEXT_COUNT = 0.9, 0.9, 5
HEAD_SHARE, LAYER_SHARE = 0.5, 0.5
SINK_TOKEN_MIN_FREQ, CHANNEL_MIN_FREQ = 0.05, 0.1


def sink_positions(rows: list[EvalRow], share: float = POSITION_SHARE) -> list[int]:
    """Positions that are sink tokens in >= share of the prompts that reach them."""
    n_rows = len(rows)
    lengths = np.array([r.n_tokens for r in rows])
    hits = Counter(s.position for r in rows for s in r.sinks)
    out = []
    for pos, n in sorted(hits.items()):
        reach = int((lengths > pos).sum())
        if reach * 2 >= n_rows and n >= share * reach:
            out.append(pos)
    return out


def sink_texts(
    rows: list[EvalRow], skip_positions: list[int], share: float = TEXT_SHARE, min_count: int = MIN_TEXT_COUNT
) -> dict[str, float]:
    """{text: share of its occurrences that sink} for texts that sink wherever they appear."""
    skip = set(skip_positions)
    seen: Counter = Counter()
    sank: Counter = Counter()
    for r in rows:
        sinks = {s.position for s in r.sinks}
        for pos, text in enumerate(r.tokens):
            if pos in skip:
                continue
            seen[text] += 1
            sank[text] += pos in sinks
    return {t: sank[t] / n for t, n in sorted(seen.items()) if n >= min_count and sank[t] >= share * n}


def frequent(items: list, share: float, total: int) -> list:
    counts = Counter(items)
    return sorted(k for k, n in counts.items() if total and n >= share * total)


def build_profile(
    rows: list[EvalRow | dict],
    model: dict,
    prompts: dict,
    settings: dict,
    position_share: float = POSITION_SHARE,
    text_share: float = TEXT_SHARE,
    min_text_count: int = MIN_TEXT_COUNT,
    head_share: float = HEAD_SHARE,
    layer_share: float = LAYER_SHARE,
) -> SinkProfile:
    """The profile of a model from its eval rows (pure: no model needed)."""
    if not rows:
        raise SinkholeError("no prompts to build a profile from")
    rows = as_rows(rows)
    n = len(rows)
    positions = sink_positions(rows, position_share)
    texts = sink_texts(rows, positions, text_share, min_text_count)

    by_pos: dict[int, list[EvalSink]] = defaultdict(list)
    for r in rows:
        for s in r.sinks:
            by_pos[s.position].append(s)
    sink_tokens = [
        {
            "position": p,
            "text": Counter(s.text for s in ss).most_common(1)[0][0],
            "attn_mass": float(np.mean([s.attn_mass for s in ss])),
            "sink_rate": float(np.mean([s.sink_rate for s in ss])),
            "frequency": len(ss) / n,
        }
        for p, ss in sorted(by_pos.items())
        if len(ss) >= SINK_TOKEN_MIN_FREQ * n
    ]
    for text, freq in texts.items():
        ss = [s for r in rows for s in r.sinks if s.text == text and s.position not in positions]
        sink_tokens.append(
            {
                "position": None,
                "text": text,
                "attn_mass": float(np.mean([s.attn_mass for s in ss])),
                "sink_rate": float(np.mean([s.sink_rate for s in ss])),
                "frequency": freq,
            }
        )

    spiking = [r for r in rows if r.spikes]
    values: dict[int, list[float]] = defaultdict(list)
    for r in spiking:
        for s in r.spikes:
            for c, v in zip(s.channels, s.channel_values):
                values[c].append(v)
    channel_freq = Counter(c for r in spiking for c in r.spike_channels)
    spike_channels = [
        {"channel": c, "typical_value": float(np.median(values[c])), "frequency": k / len(spiking)}
        for c, k in sorted(channel_freq.items(), key=lambda kv: (-kv[1], kv[0]))
        if k >= CHANNEL_MIN_FREQ * len(spiking)
    ]
    spikes = [s for r in rows for s in r.spikes]
    step_up = frequent([l for s in spikes for l in set(s.step_up_layers)], layer_share, len(spikes))
    step_down = frequent([l for s in spikes for l in set(s.step_down_layers)], layer_share, len(spikes))
    heads = frequent([tuple(h) for r in rows for h in r.sink_heads], head_share, n)

    described = [
        f"position {p} ({next((t['text'] for t in sink_tokens if t['position'] == p), '?')!r})" for p in positions
    ]
    described += [f"token {t!r} wherever it appears" for t in texts]
    verb = "sinks" if len(described) == 1 else "sink"
    description = (
        f"{' and '.join(described)} {verb} in >= {position_share:.0%} of {n} prompts"
        if described
        else f"no position or token sinks in >= {position_share:.0%} of {n} prompts"
    )
    return SinkProfile(
        model=model,
        sink_rule={"positions": positions, "token_texts": list(texts), "description": description},
        sink_tokens=sink_tokens,
        spike_channels=spike_channels,
        step_up_layers=step_up,
        step_down_layers=step_down,
        sink_heads=[list(h) for h in heads],
        pinned_slots=(max(positions) + 1) if positions else DEFAULT_PINNED_SLOTS,
        prompts=prompts,
        settings={
            **settings,
            "position_share": position_share,
            "text_share": text_share,
            "head_share": head_share,
            "layer_share": layer_share,
        },
    )
