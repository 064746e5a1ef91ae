"""kv-bench's methods: every cache built to hold at most `budget` x dense attention's KV bytes at the
end of a sample (context + answer tokens), and the forward passes that run a batch of samples through one.

    dense       transformers' DynamicCache: every key (the reference; its bytes define the budget)
    window      the C most recent keys in every head (C: the largest uniform size within budget)
    sinks       the first n_sink keys + the C - n_sink most recent, every head (StreamingLLM's policy)
    head_aware  HeadAwareSinkCache.from_profile(budget=..., length=context + answer): the heads the
                profile's streaming scores put first keep everything, the others sinks + local sinks
                + a window; with `select`, the heads put first keep that share of what dense holds for
                them (the prompt; a sliding layer's window unless `select_sliding` is False), chosen as
                SnapKV chooses (`sinkhole.cache.kv_select`), instead of everything
    random:k    the same, retrieval heads drawn at random with seed k (the control)
    snapkv      SnapKVCache: every prompt key until the prompt ends, then per head the keys the last
                `snap_window` queries attend to most, `capacity` per head so that the kept keys plus
                the answer's fit the budget (`snap_capacity`: one key count for every layer, sliding
                layers with a shorter window whole, as dense)

Window, sinks, head-aware and random read their prompt in chunks of `chunk` tokens (the head-aware
masks make a chunk exact); dense and SnapKV read it densely in the same chunks, and the prompt's
last `snap_window` tokens are one chunk for every method (SnapKV's observation window), so a sample
costs every method the same forwards. Window and sinks are HeadAwareSinkCache with no retrieval
heads: sinks keep their positions (no re-rotation), exact within the trained context.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from sinkhole.cache.head_plan import DEFAULT_LOCAL_SINKS, DEFAULT_RANK_BY, DEFAULT_WINDOW
from sinkhole.cache.kv_select import SELECT_KERNEL
from sinkhole.errors import SinkholeError
from sinkhole.kvbench.snapkv import DEFAULT_KERNEL as SNAP_KERNEL
from sinkhole.kvbench.snapkv import DEFAULT_WINDOW as SNAP_WINDOW
from sinkhole.results.base import Result, opt

METHODS = ("dense", "window", "sinks", "head_aware", "random", "snapkv")
LABELS = {
    "dense": "dense (full attention)",
    "window": "window only",
    "sinks": "sinks + window (StreamingLLM)",
    "head_aware": "head-aware (profile)",
    "random": "head-aware (random heads)",
    "snapkv": "SnapKV-style eviction",
}


@dataclass(frozen=True)
class Plan(Result):
    """What decides a method's cache besides the sample's length (all recorded in the results:
    `to_dict()` is `settings.numbers.plan`)."""

    budget: float = 0.5
    window: int = DEFAULT_WINDOW  # the head-aware cache's streaming heads
    local_sinks: int = DEFAULT_LOCAL_SINKS
    rank_by: str = DEFAULT_RANK_BY
    n_sink: int | None = None  # None: the sinks the profile's scores were measured with
    snap_window: int = SNAP_WINDOW
    snap_kernel: int = SNAP_KERNEL
    chunk: int = 256
    select: float | None = None  # head-aware's retrieval heads keep this share of what dense holds for them
    select_kernel: int = SELECT_KERNEL
    # with select, sliding layers' retrieval heads select that share of their window too (None: yes,
    # False: they keep it whole, the earlier rule; set by the CLI whenever --select is, so a record
    # made before this field existed is not resumed under the other rule)
    select_sliding: bool | None = opt("with --select")
    # with select, what the selections leave of the budget keeps the heads put first whole (None: not)
    select_fill: bool | None = opt("with --select-fill")


def check_select_options(select: float | None, **flags: bool) -> None:
    """Options that change what --select keeps (select_global_only=..., select_fill=...) need it."""
    for flag, on in flags.items():
        if on and select is None:
            name = "--" + flag.replace("_", "-")
            raise SinkholeError(f"{name} changes what --select keeps: give --select SHARE too")


def variants(methods, random_seeds: int) -> list[str]:
    """Method names as cells run them: 'random' becomes 'random:0' .. 'random:<random_seeds - 1>'."""
    out = []
    for m in methods:
        out += [f"random:{k}" for k in range(random_seeds)] if m == "random" else [m]
    return out


def base(variant: str) -> str:
    return variant.split(":")[0]


def layer_layout(model) -> tuple[list[str], list[int | None], int, int]:
    """(kinds, sliding windows, KV heads, bytes of one key + value slot of one head)."""
    from sinkhole.cache.head_aware import kv_head_count
    from sinkhole.profiles.stream_scores import layer_kinds

    kinds, windows = layer_kinds(model)
    cfg = model.config.get_text_config(decoder=True)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    item = next(model.parameters()).element_size()
    return kinds, windows, kv_head_count(model), 2 * head_dim * item


def dense_slots(kinds, windows, heads: int, n: int) -> int:
    """Key slots dense attention holds after n tokens, over all layers and KV heads (one sequence)."""
    return heads * sum(n if w is None else min(n, w) for w in windows)


def dense_bytes(model, n: int) -> int:
    kinds, windows, heads, per_slot = layer_layout(model)
    return dense_slots(kinds, windows, heads, n) * per_slot


def n_sink_of(profile, plan: Plan) -> int:
    if plan.n_sink is not None:
        return plan.n_sink
    return int((getattr(profile, "streaming", None) or {}).get("n_sink", 4))


def snap_capacity(model, budget: float, n_total: int, new_tokens: int) -> tuple[int, int | None]:
    """(keys per global-layer head SnapKV keeps at the prompt's end, keys a sliding layer keeps between
    steps; None: no sliding layer), so that every layer holds at most budget x dense's slots at n_total
    tokens, the `new_tokens` after the prompt included.

    SnapKV's capacity is a number of keys per head, the same in every layer (Li et al.'s
    max_capacity_prompt): C, the largest count with every head at min(C, its dense) within the budget
    (`uniform_size`, the window method's rule). A sliding layer whose own window is below C keeps it
    whole, as dense does, and the global heads share what the sliding layers leave."""
    from sinkhole.cache.recall import uniform_size

    kinds, windows, heads, _ = layer_layout(model)
    C = uniform_size(kinds, windows, heads, budget, n_total)
    sliding = [w for w in windows if w is not None]
    if not sliding:
        return C - new_tokens, None
    keep = max(1, C - new_tokens)
    # a sliding layer holds (its window - 1) keys between steps, and a view of those + the new tokens
    # after they arrive as one chunk: what it holds at the end
    held = sum(min(n_total, min(w - 1, keep) + new_tokens) for w in sliding)
    left = int(budget * dense_slots(kinds, windows, heads, n_total)) // heads - held
    return left // (len(windows) - len(sliding)) - new_tokens, keep


def make_cache(variant: str, model, profile, plan: Plan, prompt_length: int, new_tokens: int):
    """(cache, attention context) for one method and a batch of samples of one shape.

    new_tokens: answer tokens fed after the prompt (all but the last, which is only predicted); every
    budget is counted at prompt + new tokens, what dense holds at the end."""
    from transformers import DynamicCache

    from sinkhole.cache.head_aware import HeadAwareSinkCache, head_aware_attention
    from sinkhole.cache.recall import uniform_size
    from sinkhole.kvbench.snapkv import SnapKVCache, snapkv_attention

    n_total = prompt_length + new_tokens
    name = base(variant)
    if name == "dense":
        return DynamicCache(config=model.config), contextlib.nullcontext
    if name == "snapkv":
        cap, sliding_keep = snap_capacity(model, plan.budget, n_total, new_tokens)
        if cap <= plan.snap_window:
            raise SinkholeError(
                f"budget {plan.budget:.0%} leaves SnapKV {cap} keys per head at {n_total} tokens: "
                f"no more than its observation window ({plan.snap_window})"
            )
        cache = SnapKVCache(
            model=model,
            capacity=min(cap, prompt_length),
            prompt_length=prompt_length,
            window=plan.snap_window,
            kernel=plan.snap_kernel,
            max_new=new_tokens,
            sliding_keep=sliding_keep,
        )
        return cache, snapkv_attention
    if name in ("window", "sinks"):
        kinds, windows, heads, _ = layer_layout(model)
        C = uniform_size(kinds, windows, heads, plan.budget, n_total)
        S = n_sink_of(profile, plan) if name == "sinks" else 0
        if C <= S + 1:
            raise SinkholeError(f"budget {plan.budget:.0%} leaves {C} keys per head: too few for {S} sinks + a window")
        return HeadAwareSinkCache([[] for _ in kinds], S, C - S, model=model), head_aware_attention
    if name in ("head_aware", "random"):
        from sinkhole.cache.kv_select import selection_for

        seed = int(variant.split(":")[1]) if name == "random" else None
        select = None
        if plan.select is not None:  # chosen by the prompt's last chunk: SnapKV's observation window
            select = selection_for(
                plan.select,
                prompt_length,
                n_total,
                plan.snap_window,
                plan.select_kernel,
                plan.select_sliding is not False,
            )
        cache = HeadAwareSinkCache.from_profile(
            profile,
            model=model,
            budget=plan.budget,
            length=n_total,
            window=plan.window,
            n_sink=plan.n_sink,
            local_sinks=plan.local_sinks,
            rank_by=plan.rank_by,
            random_heads=seed,
            select=select,
            fill_whole=bool(plan.select_fill),
        )
        return cache, head_aware_attention
    raise SinkholeError(f"unknown kv-bench method {variant!r} (known: {', '.join(METHODS)})")


def cache_detail(cache) -> dict:
    """What the results record about a cache's shape (retrieval heads, SnapKV's capacity)."""
    from sinkhole.cache.head_aware import HeadAwareSinkCache
    from sinkhole.kvbench.snapkv import SnapKVCache

    if isinstance(cache, HeadAwareSinkCache):
        s = cache.summary()
        keys = ("n_sink", "window", "local_sinks", "retrieval_heads", "kv_heads")
        if not cache.select:
            return {k: s[k] for k in keys}
        return {k: s[k] for k in keys} | {"select": cache.select.to_dict(), "whole_heads": sum(map(len, cache.whole))}
    if isinstance(cache, SnapKVCache):
        return dict(capacity=cache.capacity, window=cache.window, kernel=cache.kernel)
    return {}


def kv_bytes_of(cache) -> int:
    from sinkhole.cache.sink_cache import cache_nbytes

    return cache.kv_bytes() if hasattr(cache, "kv_bytes") else cache_nbytes(cache)


def chunks(prompt_length: int, chunk: int, last: int) -> list[tuple[int, int]]:
    """The prompt's forwards: chunks of `chunk` tokens up to the last `last` tokens, then those."""
    cut = max(0, prompt_length - last)
    out = [(s, min(s + chunk, cut)) for s in range(0, cut, chunk)]
    return out + [(cut, prompt_length)]


@torch.inference_mode()
def prefill(model, cache, ids: torch.Tensor, spans) -> torch.Tensor | None:
    """Feed ids[:, s:e] for each (s, e) in spans; returns the last position's logits (B, V) float32."""
    logits = None
    for s, e in spans:
        logits = model(ids[:, s:e], cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
    return logits


@torch.inference_mode()
def answer_logits(model, cache, last: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Logits (B, A, V) float32 predicting answers[:, i] for every i: the prompt's last logits, then
    one forward of answers[:, :-1] (teacher forcing)."""
    if answers.shape[1] == 1:
        return last[:, None]
    rest = model(answers[:, :-1], cache=cache, use_cache=True).logits.float()
    return torch.cat((last[:, None], rest), dim=1)
