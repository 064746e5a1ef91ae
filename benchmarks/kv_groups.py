"""Where does a head-aware plan lose perplexity? kv-bench's plan with some layers' heads kept otherwise.

    PYTHONPATH=. python benchmarks/kv_groups.py --model gemma3-270m --window 128 --select 0.45 \
        --length 2048 --seed-base 2000 plan whole:5+11+17 whole:11 whole:11/stream:17
    PYTHONPATH=. python benchmarks/kv_groups.py --select 0.3 --length 1024 plan select:0-29 --json out.json

kv-bench's ppl samples at `--length` (`--seeds` of them from `--seed-base`: the held-out text half,
the 128 tokens after each prompt scored) run under dense and under each variant of kv-bench's
head-aware plan (`--budget`, `--window`, `--select` ... as `sinkhole kv-bench` takes them). A variant
is `plan` or parts joined by `/`, each OP:LAYERS (LAYERS: 5, 5+11+17 or 0-4, last included):

    whole:L    every KV head of those layers keeps everything (its own window on a sliding layer)
    stream:L   every KV head of those layers keeps sinks + local sinks + window
    select:L   every KV head of those layers selects (needs --select)

A variant other than `plan` may pass the budget: it asks where the plan's choice costs, not what
fits. Per variant: ppl over every scored token, its ratio to dense's, the key slots held (of dense's)
and each sample's mean nll, so one sample that carries a ratio shows, beside the share of each
sample's scored 8-grams that occur in its prompt (text that repeats: what a selection made at the
prompt's end cannot foresee). `--json` is written after each
variant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def layer_set(text: str, n_layers: int) -> list[int]:
    """'5', '5+11+17', '0-4' (last included) -> sorted layer indices, checked against n_layers."""
    from sinkhole.errors import SinkholeError

    out: set[int] = set()
    try:
        for part in text.split("+"):
            lo, dash, hi = part.partition("-")
            first, last = int(lo), int(hi if dash else lo)
            if last < first:
                raise ValueError
            out.update(range(first, last + 1))
    except ValueError:
        raise SinkholeError(f"layers are N, N+M or N-M (got {text!r})") from None
    if not out or min(out) < 0 or max(out) >= n_layers:
        raise SinkholeError(f"layers {text!r} out of range for {n_layers} layers")
    return sorted(out)


def repeated_share(prompt: list[int], answer: list[int], n: int = 8) -> float:
    """Share of the answer's n-grams that occur in the prompt: how much of the continuation repeats
    earlier text (which a selection made at the prompt's end cannot foresee)."""
    seen = {tuple(prompt[i : i + n]) for i in range(len(prompt) - n + 1)}
    grams = [tuple(answer[i : i + n]) for i in range(len(answer) - n + 1)]
    return sum(g in seen for g in grams) / len(grams) if grams else 0.0


def variant_heads(spec: str, retrieval, whole, n_heads: int, select: bool):
    """(retrieval, whole) per layer after applying spec's parts to the plan's (both lists of lists)."""
    from sinkhole.errors import SinkholeError

    retrieval, whole = [list(r) for r in retrieval], [list(w) for w in whole]
    if spec == "plan":
        return retrieval, whole
    every = list(range(n_heads))
    for part in spec.split("/"):
        op, _, layers = part.partition(":")
        if op not in ("whole", "stream", "select") or not layers:
            raise SinkholeError(f"a variant part is whole:L, stream:L or select:L (got {part!r})")
        if op == "select" and not select:
            raise SinkholeError("select:L needs --select SHARE")
        for i in layer_set(layers, len(retrieval)):
            retrieval[i], whole[i] = (every if op == "select" else []), (every if op == "whole" else [])
    return retrieval, whole


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="plan, or OP:LAYERS parts joined by / (see above)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--seed-base", type=int, default=2000)
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=None, help="default: kv-bench's")
    ap.add_argument("--select", type=float, default=None)
    ap.add_argument("--select-global-only", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from sinkhole.cache.head_aware import HeadAwareSinkCache
    from sinkhole.cli.kv_bench_cmd import too_long
    from sinkhole.errors import SinkholeError
    from sinkhole.kvbench.bench import answer_nll, batch_tensors, cell_score
    from sinkhole.kvbench.methods import Plan, chunks, make_cache
    from sinkhole.long_tasks import Encoder, make_samples
    from sinkhole.probe.loading import load_model
    from sinkhole.profiles.profile import load_profile
    from sinkhole.validate import integer

    torch.set_num_threads(args.threads)
    given = dict(window=args.window) if args.window else {}
    if args.select is not None:  # as kv-bench sets it
        given["select_sliding"] = not args.select_global_only
    plan = Plan(budget=args.budget, select=args.select, **given)
    out = dict(model=args.model, length=args.length, seeds=args.seeds, seed_base=args.seed_base, plan=plan.to_dict())
    try:  # kv-bench's checks, before the model loads
        integer(args.seeds, "--seeds")
        integer(args.seed_base, "--seed-base", lo=0)
        integer(args.length, "--length", lo=64)
        too_long(args.model, [args.length])
        lm = load_model(args.model)
        model, prof = lm.model, load_profile(lm.name)
        samples = make_samples(Encoder(lm.tokenizer), "ppl", args.length, 1, args.seeds, args.seed_base)
        ids, ans, lens = batch_tensors(samples, "cpu")
        L, A = ids.shape[1], ans.shape[1]
        spans = chunks(L, plan.chunk, plan.snap_window)
        base, attention = make_cache("head_aware", model, prof, plan, L, A - 1)
        mp = base.memory_plan
        print(mp.line(), flush=True)
        # every spec checked before the first forward
        heads = {
            v: variant_heads(v, base.retrieval, base.whole, base.n_kv_heads, args.select is not None)
            for v in args.variants
        }
        t0 = time.perf_counter()
        dense_cache, dense_ctx = make_cache("dense", model, prof, plan, L, A - 1)
        dense = answer_nll(model, dense_cache, dense_ctx, ids, ans, lens, spans)
        repeats = [round(repeated_share(s.ids, s.answer), 3) for s in samples]
        out["dense"] = dict(ppl=round(cell_score("ppl", dense, lens), 4), nll=[round(x, 4) for x in dense])
        out["repeats"] = repeats  # per sample: share of its scored 8-grams found in its prompt
        print(
            f"dense: ppl {out['dense']['ppl']:.4f} ({time.perf_counter() - t0:.0f} s); nll per sample "
            + " ".join(f"{x:.3f}" for x in dense),
            flush=True,
        )
        print("8-grams of the scored tokens found in the prompt, per sample: " + " ".join(f"{x:.2f}" for x in repeats))
        out["variants"] = []
        for spec in args.variants:
            t0 = time.perf_counter()
            r, w = heads[spec]
            cache = HeadAwareSinkCache(
                r,
                base.n_sink,
                base.window,
                model=model,
                local_sinks=base.local_sinks,
                length=L + A - 1,
                select=base.select,
                whole=w,
            )
            nll = answer_nll(model, cache, attention, ids, ans, lens, spans)
            ppl = cell_score("ppl", nll, lens)
            row = dict(
                variant=spec,
                ppl=round(ppl, 4),
                vs_dense=round(ppl / out["dense"]["ppl"], 4),
                slots=cache.used_slots(),
                slots_share=round(cache.used_slots() / mp.dense_slots, 4),
                nll=[round(x, 4) for x in nll],
            )
            out["variants"].append(row)
            held = f"{row['slots']} of {mp.dense_slots} key slots ({row['slots_share']:.1%})"
            print(
                f"{spec}: ppl {ppl:.4f} = {row['vs_dense']:.3f}x dense, {held}, {time.perf_counter() - t0:.0f} s; "
                "nll per sample " + " ".join(f"{x:.3f}" for x in nll),
                flush=True,
            )
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(out, f, indent=1)
    except SinkholeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
