"""Where a sliding-window layer's far attention goes: the measurement behind local sinks
(docs/cache.md, "What local sinks changed"). A few seconds on a CPU.

    python benchmarks/local_sinks.py                          # Gemma-3-270M, window 64, top 8
    python benchmarks/local_sinks.py --window 128 --top 16 --json out.json

For each sliding layer, over the queries from --start on of one profile copy prompt
(`sinkhole.experiments.head_scores.streaming_prompts`, 1024 tokens): the attention each query puts
beyond its last --window keys (within the layer's own sliding window), the share of that far
attention on its --top most attended far keys, and the keys that draw the most far attention over
all those queries, with their tokens. Exact softmax in float32 from the post-RoPE queries and keys
(a recorder tap), head-averaged per KV head.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from sinkhole.experiments.head_scores import streaming_prompts
from sinkhole.probe.loading import load_model
from sinkhole.probe.recorder import Recorder, recording, tapped
from sinkhole.profiles.stream_scores import attention_modules, layer_kinds


def far_attention(query, key, scaling, sliding: int, window: int, start: int, top: int, softcap=None) -> dict:
    """query (1, Hq, T, D), key (1, Hkv, T, D): far mass per query and its concentration, head mean.
    softcap: the layer's logit soft-capping (Gemma-2), applied as the model does."""
    _, Hq, T, _ = query.shape
    G = Hq // key.shape[1]
    k = key.repeat_interleave(G, 1)
    s = torch.einsum("bhtd,bhkd->bhtk", query[:, :, start:].float(), k.float()) * scaling
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    t, kp = torch.arange(start, T)[:, None], torch.arange(T)[None]
    own = (kp <= t) & (t - kp < sliding)
    p = torch.softmax(s.masked_fill(~own, float("-inf")), -1)[0]  # (Hq, queries, T)
    far = p * (kp <= t - window)
    mass = far.sum(-1)  # (Hq, queries)
    conc = far.topk(top, -1).values.sum(-1) / mass.clamp(min=1e-9)
    heavy = far.sum((0, 1)).topk(top).indices.tolist()
    return dict(far=float(mass.mean()), top_share=float(conc.mean()), heavy=heavy)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--window", type=int, default=64, help="recent keys that count as near, default 64")
    ap.add_argument("--top", type=int, default=8, help="far keys whose share is reported, default 8")
    ap.add_argument("--start", type=int, default=600, help="first query measured, default 600")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    lm = load_model(args.model, log=lambda m: print(m, file=sys.stderr))
    kinds, windows = layer_kinds(lm.model)
    if "sliding" not in kinds:
        print(f"{lm.name} has no sliding-window layers", file=sys.stderr)
        return 2
    mods = attention_modules(lm.model)
    ids = streaming_prompts(lm.tokenizer, 1, 1024)[0].ids
    rows = {}

    def tap(layer, query, key, value):
        if kinds[layer] == "sliding":
            softcap = getattr(mods[layer], "attn_logit_softcapping", None)
            rows[layer] = far_attention(
                query, key, mods[layer].scaling, windows[layer], args.window, args.start, args.top, softcap
            )

    rec = Recorder(len(kinds), torch.ones(ids.shape, dtype=torch.bool))
    with torch.inference_mode(), recording(lm.model, lm.family, rec), tapped(rec, tap):
        lm.model(input_ids=ids.to(lm.device), use_cache=False, logits_to_keep=1)
    print(f"| sliding layer | far attention (beyond {args.window} keys) | share on top {args.top} | top far keys |")
    print("|---:|---:|---:|---|")
    for layer, r in sorted(rows.items()):
        r["tokens"] = [lm.tokenizer.decode([int(ids[0, i])]) for i in r["heavy"]]
        keys = ", ".join(f"{i} {tok!r}" for i, tok in zip(r["heavy"][:4], r["tokens"]))
        print(f"| {layer} | {r['far']:.2f} | {r['top_share']:.2f} | {keys} |")
    if args.json:
        with open(args.json, "w") as f:
            out = dict(model=lm.name, window=args.window, top=args.top, start=args.start, layers=rows)
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
