"""PNG figures of a lab run (matplotlib through sinkhole.render.png, written atomically into the run directory):
trajectories.png  per variant over training steps, mean over seeds: sink rate, spike score of position
                  0 (the detector's threshold drawn), sink mass, eval loss
emergence.png     the baseline alone, each seed: spike score and sink rate of position 0 on one time
                  axis, so a reader sees which comes first
final.png         the last checkpoint, mean +- sd over seeds per variant: spike score (threshold
                  drawn), top |h| ratio, sink mass, sink rate
The x axis is the training step itself (symmetric-log, linear below 1, so step 0 sits at 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sinkhole.render.png import pyplot, save_png
from sinkhole.results.lab import LabResult
from sinkhole.results.lab_claims import METRICS

FIGURES = ("trajectories.png", "emergence.png", "final.png")


def _steps_axis(ax) -> None:
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)
    ax.set_xlabel("training step")


def _by_variant(result: LabResult) -> dict[str, list]:
    out: dict[str, list] = {}
    for v in result.variants:
        if v.checkpoints:
            out.setdefault(v.name, []).append(v)
    return out


def _mean_curve(runs, key: str) -> tuple[list[int], np.ndarray]:
    """Steps every seed reached, and the mean of `key` over seeds at each."""
    n = min(len(r.checkpoints) for r in runs)
    steps = [c.step for c in runs[0].checkpoints[:n]]
    return steps, np.mean([[getattr(c, key) for c in r.checkpoints[:n]] for r in runs], axis=0)


def write_figures(result: LabResult, out_dir: str | Path) -> list[Path]:
    plt = pyplot()
    out = Path(out_dir)
    paths = [out / name for name in FIGURES]
    groups = _by_variant(result)
    threshold = result.settings.threshold
    try:
        fig, axes = plt.subplots(2, 2, figsize=(12, 8))
        panels = [
            (axes[0, 0], "sink_rate", "sink rate of position 0 (share of heads), mean over seeds"),
            (axes[0, 1], "spike_score", "spike score of position 0 (x median token), mean over seeds"),
            (axes[1, 0], "sink_mass", "sink mass of position 0, mean over seeds"),
            (axes[1, 1], "eval_loss", "eval loss (nats), mean over seeds"),
        ]
        for ax, key, label in panels:
            for name, runs in groups.items():
                steps, y = _mean_curve(runs, key)
                base = name == "baseline"
                ax.plot(
                    steps, y, marker="o", ms=2.5, lw=2.5 if base else 1, color="black" if base else None, label=name
                )
            _steps_axis(ax)
            ax.set_title(label, fontsize=10)
        axes[0, 1].axhline(threshold, color="red", ls=":", lw=1.2, label=f"detector threshold {threshold:g}x")
        axes[0, 1].set_yscale("log")
        axes[0, 0].legend(fontsize=7, ncol=3)
        axes[0, 1].legend(handles=axes[0, 1].get_lines()[-1:], fontsize=8)
        fig.suptitle("over training (sinkhole lab)")
        fig.tight_layout()
        save_png(fig, paths[0])
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax2 = ax.twinx()
        for r in groups.get("baseline", []):
            steps = [c.step for c in r.checkpoints]
            seed = "" if r.seed is None else f" seed {r.seed}"
            ax.plot(
                steps, [c.spike_score for c in r.checkpoints], color="#c44e52", marker="o", ms=3, label="spike" + seed
            )
            ax2.plot(
                steps,
                [c.sink_rate for c in r.checkpoints],
                color="#4c72b0",
                marker="s",
                ms=3,
                ls="--",
                label="sink rate" + seed,
            )
        ax.axhline(threshold, color="#c44e52", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_ylabel("spike score of position 0 (solid; dotted: threshold)", color="#c44e52")
        ax2.set_ylabel("sink rate of position 0 (dashed)", color="#4c72b0")
        ax2.set_ylim(0, 1.05)
        _steps_axis(ax)
        ax.set_title("baseline: spike and sink over training, each seed", fontsize=10)
        fig.tight_layout()
        save_png(fig, paths[1])
        plt.close(fig)

        summary = result.summary().variants
        names = [n for n in groups if n in summary]
        fig, axes = plt.subplots(1, 4, figsize=(15, 0.9 + 0.3 * max(4, len(names))))
        for ax, key in zip(axes, METRICS):
            means = [summary[n][key].mean for n in names]
            sds = [summary[n][key].sd for n in names]
            ax.barh(names, means, xerr=sds, color="#4c72b0", ecolor="black", capsize=2)
            if key == "spike_score":
                ax.axvline(threshold, color="red", ls=":", lw=1.2, label=f"threshold {threshold:g}x")
                ax.legend(fontsize=7)
            ax.invert_yaxis()
            ax.set_title(f"{METRICS[key]} of position 0", fontsize=10)
            ax.tick_params(axis="y", labelsize=8)
        fig.suptitle(f"last checkpoint (step {result.settings.train['steps']}), mean +- sd over seeds")
        fig.tight_layout()
        save_png(fig, paths[2])
        plt.close(fig)
    finally:
        plt.close("all")
    return paths
