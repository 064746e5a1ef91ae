"""PNG figures of a lab run (matplotlib through sinkhole.report.png, written atomically into the run directory):
trajectories.png  per variant over training steps (log x): sink mass and sink rate of position
                  0, spike score of position 0, eval loss
final.png         the last checkpoint's sink mass, first-position share, spike score and
                  top |h| ratio, variants side by side
"""

from __future__ import annotations

from pathlib import Path

from sinkhole.lab.run import LabResult
from sinkhole.report.png import pyplot, save_png

FIGURES = ("trajectories.png", "final.png")


def write_figures(result: LabResult, out_dir: str | Path) -> list[Path]:
    plt = pyplot()
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
                    label=v.label,
                    ls="-" if v.name in ("baseline",) else "--" if v.model.get("attention") != "softmax" else "-",
                )
            ax.set_xscale("log")
            ax.set_xlabel("training step (step 0 at 0.5)")
            ax.set_title(label, fontsize=10)
        axes[0, 0].legend(fontsize=8, ncol=2)
        fig.suptitle("emergence over training (sinkhole lab)")
        fig.tight_layout()
        save_png(fig, paths[0])
        plt.close(fig)

        fig, axes = plt.subplots(1, 4, figsize=(14, 4))
        names = [v.label for v in variants]
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
        save_png(fig, paths[1])
        plt.close(fig)
    finally:
        plt.close("all")
    return paths
