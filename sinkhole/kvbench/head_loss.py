"""What each KV head's compression costs in loss, measured: the profile's `streaming.loss` section,
which the `loss` plan (`head_plan.plan_by_loss`, `--rank-by loss`) spends the budget by.

The attention scores of the other rankings say where a head reads, not what a model loses when the
head reads less. This measures the latter: for each KV head h and state s (`stream`: sinks + local
sinks + window; `select`: the share the prompt's last queries choose, `kv_select`), kv-bench's ppl
samples from the calibration half of the text (seeds from 0; kv-bench's own are the other half,
from 1000) are scored under a HeadAwareSinkCache in which h alone is s and every other head keeps
everything:

    delta[s][l][h] = mean over samples of (mean nll per scored token with h in state s - dense's)

in nats. The same on the profile's calibration needle prompts (`answer_samples`; the answer's nll)
is the section's `answers`: perplexity alone would give away the heads retrieval needs. One forward
per (head, state) and batch of samples. The plan adds both deltas of the heads it compresses, an
approximation (heads interact, and a few calibration samples need not speak for other text); what
it did on Gemma-3, and why it is not the default: docs/cache.md, "A plan by measured loss".
"""

from __future__ import annotations

import torch

from sinkhole.cache.head_plan import DEFAULT_LOCAL_SINKS
from sinkhole.kvbench import LOSS_LENGTH, LOSS_SAMPLES, SNAP_WINDOW
from sinkhole.text import CALIBRATION_HALF, pydoc_source

LOSS_SINKS = 4
STATES = ("stream", "select")


def loss_samples(tokenizer, length: int = LOSS_LENGTH, count: int = LOSS_SAMPLES) -> list:
    """kv-bench ppl `Sample`s of `length` tokens (and the 128 scored after) from the calibration half,
    seeds 0..count-1: the samples the loss deltas are measured on."""
    from sinkhole.long_tasks import Encoder, make_samples

    return make_samples(Encoder(tokenizer, half=CALIBRATION_HALF), "ppl", length, 1, count, 0)


def answer_samples(tokenizer, length: int = LOSS_LENGTH) -> list:
    """The profile's calibration needle prompts at `length` (NIAH at 5 depths, 3 multi-key, 3 passkey;
    `head_scores.needle_prompts`): the samples the answer deltas are measured on, so a head whose
    compression loses a needle costs what losing it costs (nats of the answer), not what the text
    around it costs."""
    from sinkhole.experiments.head_scores import needle_prompts

    return needle_prompts(tokenizer, (length,))


def single_head(n_layers: int, n_heads: int, layer: int, head: int, state: str) -> tuple[list, list]:
    """(retrieval, whole) per layer for a HeadAwareSinkCache in which (layer, head) alone is in `state`
    ('stream' or 'select') and every other KV head keeps everything."""
    whole = [[h for h in range(n_heads) if (i, h) != (layer, head)] for i in range(n_layers)]
    retrieval = [[head] if (i == layer and state == "select") else [] for i in range(n_layers)]
    return retrieval, whole


@torch.inference_mode()
def measure_loss_scores(
    lm,
    samples: list,
    *,
    window: int,
    select: float | None,
    local_sinks: int = DEFAULT_LOCAL_SINKS,
    n_sink: int = LOSS_SINKS,
    chunk: int = 256,
    progress=None,
    world=None,
) -> dict:
    """The `loss` section: {stream [L][Hkv], select [L][Hkv] or None (without `select`), dense_nll,
    and the settings they were measured with}. samples: kv-bench `Sample`s of one prompt length, each
    scored by its answer tokens' mean nll (`loss_samples`: ppl; `answer_samples`: needles, whose
    deltas go in the section's `answers`).
    progress(n) hears of each finished (head, state) forward; world (sinkhole.distributed): the ranks
    share them, and every delta is one process's to the last bit (each forward is whole on one rank)."""
    from sinkhole.cache.head_aware import HeadAwareSinkCache, head_aware_attention, kv_head_count
    from sinkhole.cache.kv_select import SELECT_KERNEL, selection_for
    from sinkhole.distributed import World
    from sinkhole.kvbench.bench import answer_nll, batch_tensors
    from sinkhole.kvbench.methods import Plan, chunks, make_cache
    from sinkhole.profiles.stream_scores import layer_kinds

    world = world or World()
    model = lm.model
    n_layers, H = len(layer_kinds(model)[0]), kv_head_count(model)
    device = next(model.parameters()).device
    ids, ans, lens = batch_tensors(samples, device)
    L, A = ids.shape[1], ans.shape[1]
    spans = chunks(L, chunk, SNAP_WINDOW)
    selection = None if select is None else selection_for(select, L, L + A - 1, SNAP_WINDOW, SELECT_KERNEL)
    states = STATES if selection is not None else STATES[:1]
    jobs = [None] + [(s, layer, h) for layer in range(n_layers) for h in range(H) for s in states]

    def mean_nll(job) -> float:
        if job is None:
            cache, attention = make_cache("dense", model, None, Plan(), L, A - 1)
        else:
            retrieval, whole = single_head(n_layers, H, job[1], job[2], job[0])
            cache = HeadAwareSinkCache(
                retrieval, n_sink, window, model=model, local_sinks=local_sinks, length=L + A - 1, select=selection,
                whole=whole,
            )  # fmt: skip
            attention = head_aware_attention
        nll = answer_nll(model, cache, attention, ids, ans, lens, spans)
        return sum(nll) / len(nll)

    tally = world.tally(progress)
    parts = {}
    for i in world.shard([1.0] * len(jobs)):
        parts[i] = mean_nll(jobs[i])
        tally.step(1)
    tally.wait()
    got = {i: v for gathered in world.gather(parts) for i, v in gathered.items()}
    dense = got[0]
    table = {s: [[0.0] * H for _ in range(n_layers)] for s in states}
    for i, (s, layer, h) in enumerate(jobs[1:], start=1):
        table[s][layer][h] = round(got[i] - dense, 5)
    return dict(
        stream=table["stream"],
        select=table.get("select"),
        dense_nll=round(dense, 5),
        window=window,
        n_sink=n_sink,
        local_sinks=local_sinks,
        select_share=select,
        length=L,
        scored=A,
        samples=len(samples),
        text=pydoc_source(CALIBRATION_HALF),
        seeds=[min(s.seed for s in samples), max(s.seed for s in samples)],
        tasks=sorted({s.task for s in samples}),
    )


def loss_forwards(model, select: float | None) -> int:
    """Forwards of one `measure_loss_scores` pass: dense, then each KV head in each state."""
    from sinkhole.cache.head_aware import kv_head_count
    from sinkhole.profiles.stream_scores import layer_kinds

    return 1 + len(layer_kinds(model)[0]) * kv_head_count(model) * (1 if select is None else 2)


def loss_section(
    lm, *, window: int, select: float | None, length: int = LOSS_LENGTH, count: int = LOSS_SAMPLES,
    text: bool = True, answers: bool = True, progress=None, world=None,
) -> dict:  # fmt: skip
    """The profile's `streaming.loss`: the deltas on `count` calibration ppl samples of `length` tokens,
    and under `answers` those on the calibration needle prompts (left out when the tokenizer builds
    none: a word-level vocabulary has no ids for the numbers). text=False: {"answers": ...} alone,
    to add to a section measured before with the same window and share; answers=False: the text's
    alone. Up to two passes of `loss_forwards` forwards."""
    options = dict(window=window, select=select, progress=progress, world=world)
    out = measure_loss_scores(lm, loss_samples(lm.tokenizer, length, count), **options) if text else {}
    needles = answer_samples(lm.tokenizer, length) if answers else []
    if needles:
        out["answers"] = measure_loss_scores(lm, needles, **options)
    return out
