"""What a lab run shows: a terminal table, PNG figures and one self-contained HTML page.

Figures (matplotlib, Agg backend; written atomically into the run directory):
    trajectories.png  per variant over training steps (log x): sink mass and sink rate of position
                      0, spike score of position 0, eval loss
    final.png         the last checkpoint's sink mass, first-position share, spike score and
                      top |h| ratio, variants side by side
The page (`lab.html`) uses the HTML report's stylesheet, embeds the figures as data URIs and
carries the table and the claims; it opens offline.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from sinkhole.report.eval_figures import _plt, _save  # one matplotlib set-up, PNGs through the checked writer
from sinkhole.lab.run import LabResult

FIGURES = ("trajectories.png", "final.png")
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
        return [v.name] + ["-"] * (len(COLUMNS) - 1)
    return [
        v.name + ("" if v.finished else "*"),
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
        f"{t['steps']} steps x {t['batch_size']} sequences, seed {t['seed']}"
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


def write_figures(result: LabResult, out_dir: str | Path) -> list[Path]:
    plt = _plt()
    out = Path(out_dir)
    paths = [out / name for name in FIGURES]
    variants = [v for v in result.variants if v.checkpoints]
    try:
        fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
        for ax, key, label in [
            (axes[0, 0], "sink_mass", "sink mass of position 0"),
            (axes[0, 1], "sink_rate", "sink rate of position 0 (share of heads)"),
            (axes[1, 0], "spike_score", "spike score of position 0 (x median)"),
            (axes[1, 1], "eval_loss", "eval loss (nats)"),
        ]:
            for v in variants:
                steps = [max(c.step, 0.5) for c in v.checkpoints]  # step 0 drawn at 0.5 on the log axis
                ax.plot(
                    steps,
                    [getattr(c, key) for c in v.checkpoints],
                    marker="o",
                    ms=3,
                    label=v.name,
                    ls="-" if v.name in ("baseline",) else "--" if v.model.get("attention") != "softmax" else "-",
                )
            ax.set_xscale("log")
            ax.set_xlabel("training step (step 0 at 0.5)")
            ax.set_title(label, fontsize=10)
        axes[0, 0].legend(fontsize=8, ncol=2)
        fig.suptitle("emergence over training (sinkhole lab)")
        fig.tight_layout()
        _save(fig, paths[0])
        plt.close(fig)

        fig, axes = plt.subplots(1, 4, figsize=(14, 4))
        names = [v.name for v in variants]
        for ax, key, label in [
            (axes[0], "sink_mass", "sink mass of position 0"),
            (axes[1], "first_share", "share of all weight on position 0"),
            (axes[2], "spike_score", "spike score of position 0"),
            (axes[3], "top_ratio", "top |h| / median token's"),
        ]:
            ax.barh(names, [getattr(v.final, key) for v in variants], color="#4c72b0")
            ax.invert_yaxis()
            ax.set_title(label, fontsize=10)
        fig.suptitle(f"last checkpoint (step {result.settings['train']['steps']})")
        fig.tight_layout()
        _save(fig, paths[1])
        plt.close(fig)
    finally:
        plt.close("all")
    return paths


def render_html(result: LabResult, out_dir: str | Path) -> str:
    from sinkhole.lab import train as train_module
    from sinkhole.report.html_script import CSS

    out = Path(out_dir)
    imgs = []
    for name in FIGURES:
        p = out / name
        if p.is_file():
            data = base64.b64encode(p.read_bytes()).decode()
            imgs.append(f'<figure><img class="fig" alt="{name}" src="data:image/png;base64,{data}"></figure>')
    claims = "".join(f"<li><b>{html.escape(v.name)}</b>: {html.escape(v.claim)}</li>" for v in result.variants)
    env = result.environment
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sinkhole lab</title><style>{CSS}
figure {{ margin: 8px 0; }} pre.table {{ background: var(--bg); padding: 10px; overflow-x: auto; }}</style></head>
<body><header><h1>sinkhole lab: <span class="model">emergence of sinks and spikes in tiny models</span></h1>
<div class="sub">torch {html.escape(str(env.get("torch")))}, {html.escape(str(env.get("threads")))} thread(s),
started {html.escape(str(env.get("started")))}</div></header>
<h2>Final checkpoint, one switch per variant</h2>
<pre class="table">{html.escape(render_table(result))}</pre>
<h2>Figures</h2>{"".join(imgs)}
<h2>What each variant tests</h2><ul>{claims}</ul>
<details class="term"><summary>Definitions</summary><pre>{html.escape(train_module.__doc__ or "")}</pre></details>
</body></html>
"""


def write_outputs(result: LabResult, out_dir: str | Path, figures: bool = True) -> list[Path]:
    """Figures and lab.html into out_dir (lab.json is written by `run_lab` as it goes)."""
    from sinkhole.io import write_atomic

    out = Path(out_dir)
    paths = write_figures(result, out) if figures else []
    page = out / "lab.html"
    write_atomic(page, render_html(result, out))
    return paths + [page]
