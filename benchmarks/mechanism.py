"""Benchmark of `sinkhole mechanism` and `sinkhole vocab-sweep`: wall time per phase, and how far a
bfloat16 vocabulary sweep agrees with float32 on a sample.

    python benchmarks/mechanism.py                          # SmolLM2, 16 built-in prompts, full sweep
    python benchmarks/mechanism.py --model gemma3-270m --sweep-sample 16384
    python benchmarks/mechanism.py --skip-sweep

Prints a markdown block (paste into benchmarks/results/mechanism.md). On a shared machine the
load average is printed too: timings taken while others run are contended.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sweep-sample", type=int, help="sweep this many tokens (default: the whole vocabulary)")
    ap.add_argument("--agree-sample", type=int, default=1024, help="tokens compared between bfloat16 and float32")
    ap.add_argument("--skip-sweep", action="store_true")
    args = ap.parse_args()

    from sinkhole.experiments.interventions import text_ids
    from sinkhole.experiments.mechanism_study import DEFAULT_PROMPTS, MechanismConfig, run_interventions, run_mechanism
    from sinkhole.experiments.vocab_sweep import REFERENCE_TOKENS, reference_norm, sweep, vocab_sweep
    from sinkhole.probe.loading import load_model
    from sinkhole.probe.probe import ModelProbe

    rows = []
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    probe = ModelProbe(args.model, log=lambda m: None)
    rows.append(("load model (float32)", time.perf_counter() - t))
    t = time.perf_counter()
    mech, _ = run_mechanism(probe, DEFAULT_PROMPTS, cfg=MechanismConfig(interventions=False))
    rows.append((f"mechanism analyses, {len(DEFAULT_PROMPTS)} prompts (2 passes + analyses)", time.perf_counter() - t))
    t = time.perf_counter()
    layer, channels = mech.targets.step_up_layer, mech.targets.spike_channels
    iv = run_interventions(probe, MechanismConfig(), layer, channels, mech.targets.step_up_mean_values)
    rows.append((f"interventions ({iv.n_tokens} tokens, 5 perplexities + 1 probe run)", time.perf_counter() - t))
    total = sum(s for name, s in rows[1:])
    rows.append(("**mechanism total (excluding load)**", total))

    sweep_lines = []
    if not args.skip_sweep:
        lm16 = load_model(args.model, dtype="bfloat16", log=lambda m: None)
        ref_ids = text_ids(lm16.tokenizer, None, REFERENCE_TOKENS)
        out = vocab_sweep(lm16, ref_ids, sample=args.sweep_sample)
        rows.append(
            (
                f"vocab sweep, {out.n_tokens} tokens, bfloat16 ({out.tokens_per_second:.0f} tokens/s)",
                out.seconds,
            )
        )
        # bfloat16 vs float32 on a fixed sample: do the two dtypes call the same tokens spikes?
        ids = np.sort(np.random.default_rng(1).choice(out.vocab_size, size=args.agree_sample, replace=False))
        s16 = sweep(lm16, ids) / reference_norm(lm16, ref_ids)
        s32 = sweep(probe.lm, ids) / reference_norm(probe.lm, ref_ids)
        agree = float(((s16 > out.threshold) == (s32 > out.threshold)).mean())
        sweep_lines = [
            f"- sweep: {out.n_spike} of {out.n_tokens} tokens spike ({out.spike_share:.2%}); "
            f"{out.n_exceptions} exceptions ({out.exceptions_are})",
            f"- bfloat16 vs float32 on {args.agree_sample} sampled tokens: same verdict for {agree:.2%}, "
            f"median |score ratio - 1| = {float(np.median(np.abs(s16 / s32 - 1))):.3%}",
        ]
    load1 = os.getloadavg()[0]
    print(
        f"### {args.model}  ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load0:.1f} -> {load1:.1f})\n"
    )
    print("| phase | seconds |\n|---|---:|")
    for name, s in rows:
        print(f"| {name} | {s:.1f} |")
    print()
    for line in sweep_lines:
        print(line)
    ppl = iv.perplexity
    print("- perplexity: " + ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in ppl.items()))


if __name__ == "__main__":
    main()
