"""Why does the head-aware cache lose a kv-bench sample that dense answers? Three probes of one sample.

    PYTHONPATH=. python benchmarks/kv_diagnose.py heads   niah:4096:1           # which heads read the needle
    PYTHONPATH=. python benchmarks/kv_diagnose.py layers  niah:4096:1 0-10 10-17 17-30
    PYTHONPATH=. python benchmarks/kv_diagnose.py windows niah:4096:1 224 1024 --same-heads

A sample is TASK:LENGTH:INDEX, INDEX into `make_samples(task, length, depths=5, seeds=1)` (for niah
the depth: 0 = 0%, 1 = 25%, ... 4 = 100%), the prompts kv-bench runs.

- heads: dense reads the prompt, then the answer is teacher-forced through an attention function that
  keeps its probabilities; per KV head (the max over its query heads), the attention each answer
  position puts on the answer token it must write (Wu et al.'s retrieval score), and on the whole
  needle (its lead-in, value and end). Each head is marked WHOLE when the head-aware cache at
  `--budget` keeps it whole at this length.
- layers: the head-aware plan at `--budget`, with every KV head of the given layer ranges made whole
  as well (over budget: this asks where the plan's streaming heads cost the answer, not what fits).
- windows: head-aware with other streaming windows. By default each plan is made at `--budget` (a
  longer window leaves fewer heads whole); with --same-heads the budget plan's whole heads are kept
  and only the window changes (over budget).

Each prints the answer, the prediction, hit or not, and the answer's mean nll.
"""

from __future__ import annotations

import argparse
import sys

import torch


def sample_of(enc, spec: str):
    from sinkhole.errors import SinkholeError
    from sinkhole.long_tasks import make_samples

    try:
        task, length, i = spec.split(":")
        samples = make_samples(enc, task, int(length), 5, 1)
        return samples[int(i) if task == "niah" else 0]
    except (ValueError, IndexError):
        raise SinkholeError(f"a sample is TASK:LENGTH:INDEX, e.g. niah:4096:1 (got {spec!r})") from None


def run_cache(model, cache, s) -> tuple[list[int], float]:
    """Prediction of every answer token (teacher-forced, as kv-bench scores) and the answer's mean nll."""
    from sinkhole.cache.head_aware import head_aware_attention
    from sinkhole.kvbench.methods import answer_logits, chunks, prefill

    ids, ans = torch.tensor([s.ids]), torch.tensor([s.answer])
    with head_aware_attention(model):
        logits = answer_logits(model, cache, prefill(model, cache, ids, chunks(len(s.ids), 256, 32)), ans)
    return logits[0].argmax(-1).tolist(), torch.nn.functional.cross_entropy(logits[0], ans[0]).item()


def line(label: str, s, pred, nll) -> str:
    return f"{label}: {'hit ' if pred == s.answer else 'MISS'} pred {pred} answer {s.answer} nll {nll:.3f}"


def plan(lm, prof, s, budget: float, window: int | None = None):
    from sinkhole.cache.head_aware import HeadAwareSinkCache
    from sinkhole.cache.head_plan import DEFAULT_WINDOW

    n = len(s.ids) + len(s.answer) - 1
    w = window or DEFAULT_WINDOW
    return HeadAwareSinkCache.from_profile(prof, model=lm.model, budget=budget, length=n, window=w)


def like(base, lm, s, retrieval=None, window=None):
    """A cache with `base`'s settings and the given retrieval heads / window."""
    from sinkhole.cache.head_aware import HeadAwareSinkCache

    return HeadAwareSinkCache(
        retrieval if retrieval is not None else base.retrieval,
        base.n_sink,
        window or base.window,
        model=lm.model,
        local_sinks=base.local_sinks,
        length=len(s.ids) + len(s.answer) - 1,
    )


def needle_attention(lm, s) -> tuple[list[int], float, torch.Tensor, torch.Tensor]:
    """Dense prediction, its answer nll and, per layer and query head, the mean attention of the answer positions on
    the token each writes (L, H) and on the needle span (L, H)."""
    from transformers import DynamicCache

    from sinkhole.probe.hooks import registered_attention

    model = lm.model
    probs: dict[int, torch.Tensor] = {}

    def keep(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        # query (B, H, q, D), key (B, Hk, N, D): this chunk's rows, causal by absolute position
        H, q, N = query.shape[1], query.shape[2], key.shape[2]
        k, v = (t.repeat_interleave(H // key.shape[1], dim=1) for t in (key, value))
        scores = (query @ k.transpose(-1, -2)) * scaling
        future = torch.arange(N)[None, :] > torch.arange(N - q, N)[:, None]
        p = scores.masked_fill(future, float("-inf")).softmax(-1)
        probs[module.layer_idx] = p[0]
        return (p @ v).transpose(1, 2).contiguous(), None

    ids = torch.tensor([s.ids + s.answer[:-1]])
    cut, A = len(s.ids) - 1, len(s.answer)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        for a in range(0, cut, 512):
            model(ids[:, a : min(a + 512, cut)], past_key_values=cache, use_cache=True, logits_to_keep=1)
        with registered_attention(model, "sinkhole_needle_probe", keep):
            out = model(ids[:, cut:], past_key_values=cache, use_cache=True)
    L, H = len(probs), probs[0].shape[0]
    on_token, on_needle = torch.zeros(L, H), torch.zeros(L, H)
    lead = 8  # the needle's lead-in ("The special magic number is") and its end
    for layer, p in probs.items():
        on_token[layer] = sum(p[:, j, s.where + j] for j in range(A)) / A
        on_needle[layer] = p[:, :A, max(0, s.where - lead) : s.where + A + 2].sum(-1).mean(-1)
    nll = torch.nn.functional.cross_entropy(out.logits[0].float(), torch.tensor(s.answer)).item()
    return out.logits[0].argmax(-1).tolist(), nll, on_token, on_needle


def heads(lm, prof, s, args) -> None:
    Hk = lm.model.config.num_key_value_heads
    pred, nll, on_token, on_needle = needle_attention(lm, s)
    print(line("dense", s, pred, nll))
    cache = plan(lm, prof, s, args.budget)
    whole = {(layer, h) for layer, r in enumerate(cache.retrieval) for h in r}
    for name, m in (("the answer token", on_token), ("the needle", on_needle)):
        kv = m.view(m.shape[0], Hk, -1).max(-1).values
        order = sorted(((kv[i, h].item(), i, h) for i in range(kv.shape[0]) for h in range(Hk)), reverse=True)
        total = sum(v for v, _, _ in order)
        kept = sum(v for v, i, h in order if (i, h) in whole)
        print(f"attention on {name}, top KV heads ({len(whole)} whole at budget {args.budget}):")
        print("  " + "  ".join(f"L{i}h{h} {v:.3f}{'' if (i, h) in whole else ' STREAM'}" for v, i, h in order[:20]))
        print(f"  share of it on whole heads: {kept / total:.2f}")


def layers(lm, prof, s, args) -> None:
    base = plan(lm, prof, s, args.budget)
    print(line(f"plan at {args.budget} ({sum(map(len, base.retrieval))} whole)", s, *run_cache(lm.model, base, s)))
    H = base.n_kv_heads
    for spec in args.extra:
        lo, hi = map(int, spec.split("-"))
        r = [list(range(H)) if lo <= i < hi else row for i, row in enumerate(base.retrieval)]
        label = f"plan + layers {lo}-{hi - 1} whole ({sum(map(len, r))} whole)"
        print(line(label, s, *run_cache(lm.model, like(base, lm, s, retrieval=r), s)))


def windows(lm, prof, s, args) -> None:
    base = plan(lm, prof, s, args.budget)
    for w in map(int, args.extra):
        cache = like(base, lm, s, window=w) if args.same_heads else plan(lm, prof, s, args.budget, window=w)
        pred, nll = run_cache(lm.model, cache, s)
        share = cache.kv_bytes() / base.memory_plan.dense_bytes
        print(line(f"window {w}, {sum(map(len, cache.retrieval))} whole, {share:.0%} of dense bytes", s, pred, nll))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", choices=("heads", "layers", "windows"))
    ap.add_argument("sample", help="TASK:LENGTH:INDEX, e.g. niah:4096:1")
    ap.add_argument("extra", nargs="*", help="layers: ranges LO-HI (HI excluded); windows: window sizes")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--same-heads", action="store_true", help="windows: keep the budget plan's whole heads")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from sinkhole.errors import SinkholeError
    from sinkhole.long_tasks import Encoder
    from sinkhole.probe.loading import load_model
    from sinkhole.profiles.profile import load_profile

    torch.set_num_threads(args.threads)
    try:
        lm = load_model(args.model)
        s = sample_of(Encoder(lm.tokenizer), args.sample)
        print(f"{args.sample}: depth {s.depth}, answer at {s.where} of {len(s.ids)} tokens", flush=True)
        dict(heads=heads, layers=layers, windows=windows)[args.probe](lm, load_profile(lm.name), s, args)
    except SinkholeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
