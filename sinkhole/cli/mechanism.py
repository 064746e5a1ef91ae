"""`sinkhole mechanism`: the spike-and-sink mechanism of a model, measured step by step."""

from __future__ import annotations

import argparse
from pathlib import Path

from sinkhole.cli.common import add_analysis_args, add_chat_args, add_model_args, status

HELP = "lifecycle, spike channels, activation regime, quadratic amplifier, norms, sink keys, interventions"
EPILOG = """examples:
  sinkhole mechanism --json mech.json
  sinkhole mechanism --model gemma3-270m --prompts prompts.txt --output mech.html
  sinkhole mechanism --no-chat --no-interventions
  sinkhole mechanism --vocab-sweep --json mech.json     # adds the vocabulary sweep (in the model's dtype:
                                                        # minutes in float32; `vocab-sweep` runs bfloat16)

--prompts FILE: one prompt per line, or a .jsonl file with a "prompt" (or "text") field per line.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "mechanism", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(p)
    g = p.add_argument_group("prompts")
    g.add_argument(
        "--prompts",
        help="builtin (the eval suite), a .txt (one prompt a line) or .jsonl file (default: 16 built-in prompts)",
    )
    add_chat_args(g)
    add_analysis_args(p, sink_rate=False)
    a = p.add_argument_group("analysis options")
    a.add_argument(
        "--no-interventions", dest="interventions", action="store_false", help="skip the perplexity interventions"
    )
    a.add_argument("--text", type=Path, help="intervention text file (default: Python's pydoc topics)")
    a.add_argument("--text-tokens", type=int, default=1024, help="tokens of the intervention text, default 1024")
    a.add_argument(
        "--vocab-sweep", action="store_true", help="also run the vocabulary sweep (see `sinkhole vocab-sweep`)"
    )
    o = p.add_argument_group("output")
    o.add_argument("--output", "-o", type=Path, help="write the HTML report here")
    o.add_argument("--json", type=Path, help="write the JSON report (with its `mechanism` section) here ('-': stdout)")
    p.set_defaults(run=run)


def _counts(d: dict, n: int) -> str:
    """{'L11.ffn': 16} -> 'L11.ffn (16 of 16 tokens)'."""
    return ", ".join(f"{k} ({v} of {n} tokens)" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"


def render(m: dict) -> str:
    """A short terminal summary of the mechanism dict."""
    from sinkhole.report.terminal import pct

    s, t, lcy = m["summary"], m["targets"], m["lifecycle"]
    lines = [
        f"Targets  {t['n']} {'top-score tokens (no spike token passed the threshold)' if t['fallback'] else 'spike tokens'}; "
        f"step-up layer {t['step_up_layer']}; spike channels {t['spike_channels']}",
        f"Summary  spike score {s['spike_score']:.1f}x  top |h| {s['top_abs_over_median']:.0f}x median  "
        f"top sink: rate {pct(s['top_sink_rate'], 0)}, mass {pct(s['top_sink_attn_mass'])}",
        f"Lifecycle  rises at {_counts(lcy['rise_counts'], t['n'])}  falls at {_counts(lcy['fall_counts'], t['n'])}  "
        f"plateau {lcy['plateau_blocks_mean']:.1f} blocks (of {2 * len(m['channels']['value_by_layer'][0])})",
    ]
    ch = m["channels"]
    lines.append(
        "Channels  "
        + "  ".join(
            f"{c}: {v:.0f}"
            + (f" (ratio {r:.3f}, cv over layers {cv:.3f})" if r is not None and cv is not None else "")
            for c, v, r, cv in zip(
                ch["channels"], ch["plateau_value"], ch["ratio_to_main"], ch["ratio_cv_across_layers"]
            )
            if v is not None
        )
    )
    a = m["activation"]
    if a.get("applicable", True) is False:
        lines.append(f"Activation / amplifier  {a['reason']}")
    elif a["spike"]["cos"] is not None:
        lines.append(
            f"Activation ({a['activation']})  spike tokens: cos {a['spike']['cos']:.3f}, norm ratio "
            f"{a['spike']['norm_ratio']:.3f}   others: cos {a['other']['cos']:.3f}, norm ratio {a['other']['norm_ratio']:.3f}"
        )
    for c, gain in zip(m["amplifier"].get("channels", []), m["amplifier"].get("post_block_gain", [])):
        lines.append(
            f"Amplifier ch {c['channel']}  ||U_k||_F {c['fro_over_median']:.1f}x median "
            f"(rank {c['fro_rank']} of {m['amplifier'].get('n_channels', '?')})  "
            f"lambda1/|lambda2| {c['dominance']:.1f}  |cos(x, s*)| spike {c['alignment_spike'] or 0:.2f} "
            f"vs others {c['alignment_other'] or 0:.2f}"
            + (f"  post-block gain {gain:.3g}x" if gain is not None and abs(gain - 1) > 1e-3 else "")
        )
    n = m["normalization"]
    if n.get("applicable", True) is False:
        lines.append(f"Normalization  {n['reason']}")
    else:
        lines.append(
            f"Normalization  spike-channel share of post-norm mass: before {n['before']['spike_sparsity']:.2f}, "
            f"after {n['after']['spike_sparsity']:.2f} (others {n['after']['other_sparsity']:.2f})"
        )
    k = m["sink_keys"]
    if k["mean_sink_pr"] is not None:
        lines.append(
            f"Sink keys  participation ratio {k['mean_sink_pr']:.2f} (sink) vs {k['mean_other_pr']:.2f} "
            f"(others, n={k['n_sink_keys']})  sink heads {k['n_sink_heads']}/{k['n_heads']}"
        )
    if "interventions" in m:
        iv = m["interventions"]
        lines.append(
            f"Perplexity ({iv['n_tokens']} tokens)  "
            + "  ".join(f"{name} {v:,.2f}" if v is not None else f"{name} n/a" for name, v in iv["perplexity"].items())
        )
    if "vocab_sweep" in m:
        v = m["vocab_sweep"]
        lines.append(
            f"Vocabulary sweep  {pct(v['spike_share'])} of {v['n_tokens']} tokens spike alone at position 0 "
            f"({v['n_exceptions']} exceptions: {v['exceptions_are']})"
        )
    return "\n".join(lines)


def page_capture(probe, prompt, chat):
    """The Capture the page draws prompt 0 from (per-head attention, channels): that prompt run once
    more alone, with full maps (batched and alone give the same numbers; tests/test_probe.py)."""
    from sinkhole.report import html

    probe.maps_max_len = html.MAPS_MAX_LEN
    return probe.run(prompt, chat=chat)


def add_page_detail(result, probe, prompt, chat) -> None:
    """Give the example report the `detail` the page draws: the batch kept no attention maps, so its
    per-head figures come from `page_capture` (the report's numbers stay those of the batch)."""
    from sinkhole.analysis.detail import detail

    result.example.detail = detail(page_capture(probe, prompt, chat), result.example.spikes.tokens)


def run(args) -> int:
    from sinkhole.cli.common import load_probe, raise_failures, result_stream, write_all
    from sinkhole.eval.suite import load_suite
    from sinkhole.experiments.mechanism import DEFAULT_PROMPTS, MechanismConfig, run_mechanism
    from sinkhole.report import html
    from sinkhole.report.schema import MechanismResult, write_json
    from sinkhole.text import read_text_file

    prompts = [item.prompt for item in load_suite(args.prompts).items] if args.prompts else DEFAULT_PROMPTS
    text = None if args.text is None else read_text_file(args.text)
    cfg = MechanismConfig(
        threshold=args.threshold,
        epsilon=args.epsilon,
        interventions=args.interventions,
        text=text,
        text_tokens=args.text_tokens,
    )
    probe = load_probe(args)
    mech, reports = run_mechanism(probe, prompts, chat=args.chat, cfg=cfg, status=status)
    result = MechanismResult.from_sections(mech, example=reports[0])
    if args.vocab_sweep:
        from sinkhole.experiments.interventions import text_ids
        from sinkhole.experiments.vocab_sweep import vocab_sweep

        status("vocabulary sweep ...")
        result.vocab_sweep = vocab_sweep(probe.lm, text_ids(probe.tokenizer, None, 256), args.threshold)

    def write_page():
        add_page_detail(result, probe, prompts[0], args.chat)
        html.write_html(result, args.output)

    failures = write_all([(args.output, write_page), (args.json, lambda: write_json(result, args.json))])
    print(render(result.sections()), file=result_stream(args.json))
    raise_failures(failures)
    return 0
