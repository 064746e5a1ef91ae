"""The terminal table of a lab run (`sinkhole lab`): one row per variant, numbers of its last checkpoint.
lab_page sets the same table in lab.html."""

from __future__ import annotations

from sinkhole.lab.run import LabResult

COLUMNS = [  # header, width, formatter of the final checkpoint (or the variant)
    ("variant", 12),
    ("loss", 6),
    ("copy", 5),
    ("sink mass", 9),
    ("rate", 5),
    ("detected", 8),
    ("share@0", 7),
    ("attn/q", 6),
    ("spike", 6),
    ("top|h|", 6),
    ("time", 6),
]


def _fmt_row(v) -> list[str]:
    f = v.final
    if f is None:
        return [v.label] + ["-"] * (len(COLUMNS) - 1)
    return [
        v.label + ("" if v.finished else "*"),
        f"{f.eval_loss:.3f}",
        "-" if f.copy_accuracy is None else f"{f.copy_accuracy:.2f}",
        f"{f.sink_mass:.3f}",
        f"{f.sink_rate:.0%}",
        f"{f.sink_detected:.0%}",
        f"{f.first_share:.3f}",
        f"{f.attn_total:.2f}",
        f"{f.spike_score:.1f}x",
        f"{f.top_ratio:.1f}x",
        f"{v.seconds:.0f}s",
    ]


def render_table(result: LabResult) -> str:
    """The terminal table: one row per variant, numbers of its last checkpoint (see `train` for definitions)."""
    rows = [[h for h, _ in COLUMNS]] + [_fmt_row(v) for v in result.variants]
    widths = [max(w, *(len(r[i]) for r in rows)) for i, (_, w) in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    s = result.settings
    m, t = s["model"], s["train"]
    head = (
        f"{m['num_hidden_layers']} layer(s), d_model {m['hidden_size']}, {m['num_attention_heads']} heads x "
        f"{m['head_dim']}, {s['data']['task']} (vocab {s['data']['vocab_size']}, {s['data']['seq_len']} tokens), "
        f"{t['steps']} steps x {t['batch_size']} sequences, "
        + (f"seeds {', '.join(map(str, s['seeds']))}" if len(s.get("seeds") or []) > 1 else f"seed {t['seed']}")
    )
    notes = [
        "position 0 = the start token (the first ordinary token for no-bos); numbers at the last checkpoint,",
        "mean over the probe sequences. sink mass: mean alpha on position 0 over layers and heads; rate: heads",
        f"with alpha > {s['epsilon']}; detected: sequences where the detector reports position 0 as a sink;",
        "share@0: share of all attention weight on position 0; attn/q: weight a query hands out (1 for softmax;",
        "sigmoid and softpick choose it); spike: spike score of position 0; top|h|: its largest |h| over the",
        "median token's largest |h| at that layer. * = unfinished.",
    ]
    return "\n".join([head, *lines, *notes])
