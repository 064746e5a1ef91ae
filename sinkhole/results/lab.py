"""The emergence lab's results (`sinkhole lab`, lab.json): what each checkpoint measured (`Checkpoint`),
each run, a variant at one seed (`VariantResult`), and the whole lab (`LabResult`).

lab.json, schema "sinkhole.lab/2": schema, settings (`LabSettingsRecord`), environment (`Environment`),
variants (one `VariantResult` per run, its checkpoints in step order), summary (`LabSummary` of
sinkhole.results.lab_claims: derived, recomputed from the variants whenever written or read).
sinkhole.lab.run writes it; sinkhole.render.lab_* draws it. `DEFINITIONS` says how each checkpoint
field is measured (the page shows it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sinkhole.results.base import Result, opt
from sinkhole.results.lab_claims import LabSummary, summarize

SCHEMA = "sinkhole.lab/2"

# How sinkhole.lab.train measures each Checkpoint field (lab.html's "Definitions").
DEFINITIONS = """The training loop, and what is measured at each checkpoint with sinkhole's own probe.

Checkpoints sit at log-spaced steps (0, 1, 2, 4, ... up to the last), because sinks appear early
and abruptly and then sharpen slowly: even spacing would waste most probes on the plateau.

At each checkpoint a copy of the model is probed, unchanged, with `ModelProbe(LoadedModel.wrap(...))`
on a fixed held-out batch from the same stream, and `sinkhole.analysis.core.analyze` computes the
report of each sequence. `Checkpoint` keeps the numbers about position 0 (the start token, or the
first ordinary token without one), averaged over the probe sequences:

- sink_mass: attention mass of position 0 (mean over layers and heads of alpha, Gu et al.).
- sink_rate: share of (layer, head) with alpha > epsilon on position 0.
- sink_detected: share of probe sequences in which the detector reports position 0 as a sink token
  (sink rate >= min_sink_rate).
- first_share: share of all attention weight (all layers, heads, queries) that lands on position 0.
  For softmax attention every query distributes exactly 1, so this is a normalised mass.
- attn_total: mean over layers, heads and queries of a query's total attention weight: 1 for softmax
  (plain and gated); for sigmoid and softpick attention whatever the model chose (see `model.py`).
- spike_score: spike score (peak residual norm / median token's) of position 0; spike_score_max: the
  largest over tokens; spike_detected: share of sequences where position 0 scores above threshold.
- top_value, top_layer, top_channel: the largest-|.| residual entry of position 0 (first sequence);
  top_ratio: its |value| over the median token's largest |h| at that layer (Sun et al. 2024).
- per layer: mass_by_layer[l] (alpha on position 0, mean over heads), norm_ratio_by_layer[l]
  (||h_l[0]|| / median_t ||h_l[t]||); heads[l][h]: alpha on position 0 of each head.
- loss: mean training loss since the previous checkpoint; eval_loss and copy_accuracy (argmax hits on
  positions that follow a trigger, i.e. that need attention) on the probe batch.
"""


@dataclass
class Checkpoint(Result):
    """What one checkpoint measured about position 0 (see DEFINITIONS)."""

    step: int
    loss: float | None
    eval_loss: float
    copy_accuracy: float | None
    sink_mass: float
    sink_rate: float
    sink_detected: float
    first_share: float
    attn_total: float
    spike_score: float
    spike_score_max: float
    spike_detected: float
    top_value: float
    top_layer: int
    top_channel: int
    top_ratio: float
    mass_by_layer: list[float] = field(default_factory=list)
    norm_ratio_by_layer: list[float] = field(default_factory=list)
    heads: list[list[float]] = field(default_factory=list)


@dataclass
class VariantResult(Result):
    """One run: a variant trained at one seed, and its checkpoints so far."""

    name: str
    switch: str
    model: dict  # the TinyConfig it trained (sinkhole.lab.run.MODEL_KEYS)
    data: dict  # its DataConfig
    n_params: int
    seconds: float
    finished: bool
    checkpoints: list[Checkpoint]
    seed: int | None = opt("the lab ran several seeds (settings.seeds)")

    @property
    def final(self) -> Checkpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def key(self) -> tuple[str, int | None]:
        return self.name, self.seed

    @property
    def label(self) -> str:
        """What tables and figures call this run: the variant, and its seed when there are several."""
        return self.name if self.seed is None else f"{self.name} seed {self.seed}"


@dataclass(kw_only=True)
class LabSettingsRecord(Result):
    """The settings a lab ran with, as lab.json holds them (sinkhole.lab.run.LabSettings.record())."""

    model: dict  # the base model's TinyConfig fields
    data: dict  # DataConfig
    train: dict  # TrainConfig
    variants: list[str]
    seeds: list[int] | None = opt("the lab trains every variant once per seed")
    threshold: float
    epsilon: float
    min_sink_rate: float


@dataclass
class Environment(Result):
    """Where the lab ran (written by sinkhole.lab.run; a file without a key reads None)."""

    torch: str | None = opt("recorded")
    threads: int | None = opt("recorded")
    machine: str | None = opt("recorded")
    python: str | None = opt("recorded")
    started: str | None = opt("recorded")  # "%Y-%m-%d %H:%M:%S UTC"


@dataclass
class LabResult(Result):
    """A lab run: its settings, environment and runs; `summary()` derives the statistics and verdicts."""

    settings: LabSettingsRecord
    environment: Environment
    variants: list[VariantResult]
    schema: str = SCHEMA

    def summary(self) -> LabSummary:
        """Mean and sd over seeds per variant, onsets, and a verdict per claim (sinkhole.results.lab_claims)."""
        return summarize(self.variants, self.settings.threshold)

    def to_dict(self) -> dict:
        return {
            "schema": self.schema,
            "settings": self.settings.to_dict(),
            "environment": self.environment.to_dict(),
            "variants": [v.to_dict() for v in self.variants],
            "summary": self.summary().to_dict(),  # derived: recomputed from "variants" whenever read
        }
