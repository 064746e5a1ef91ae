"""The emergence lab: train one tiny model per variant (one switch each), probe its checkpoints.

Every variant trains once per seed (seeds 0, 1, 2 by default; a run is a (variant, seed) pair, the
result lists them variant by variant, labelled "name seed s"); under a launcher the ranks share the
runs (sinkhole.distributed). For one seed, every variant starts from the same initial weights
wherever the shapes agree and sees the same batches; it differs from the baseline in exactly one
switch (VARIANTS: model, data or training overrides). `LabResult.summary()` (sinkhole.results.lab_claims)
turns the runs into mean +- sd per variant and a verdict per paper claim. The results file
(`lab.json`) is rewritten atomically after every checkpoint, so an interrupted run loses at most
the checkpoint in flight; running the same settings into the same directory resumes after the last
finished run (other settings there are refused).

Measurement caveat, said everywhere the numbers appear: for sigmoid and softpick attention the
"attention mass" is the mean weight the model really puts on position 0, read from the weights it
computes (the probe's eager fallback). Softmax rows sum to 1; sigmoid rows need not, and softpick
rows sum to at most 1 (`attn_total` says how much weight a query hands out on average), so compare
their `first_share` (share of all weight on position 0) with softmax's, not only their mass.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from sinkhole.analysis import core
from sinkhole.errors import SinkholeError
from sinkhole.lab.data import HELD_OUT_INDEX, DataConfig, TokenStream
from sinkhole.lab.model import TinyConfig, build_model, n_params
from sinkhole.lab.train import TrainConfig, train
from sinkhole.results.lab import Checkpoint, Environment, LabResult, LabSettingsRecord, VariantResult

PROBE_BATCH_INDEX = HELD_OUT_INDEX  # the held-out probe batch: far past any training batch index
SHARDS_DIR = "shards"  # under a launcher: <variant>.json of the variants ranks other than 0 trained


@dataclass(frozen=True)
class Variant:
    name: str
    switch: str  # what differs from the baseline, in words
    model: dict = field(default_factory=dict)  # TinyConfig overrides
    data: dict = field(default_factory=dict)  # DataConfig overrides
    train: dict = field(default_factory=dict)  # TrainConfig overrides

    def to_dict(self) -> dict:
        return asdict(self)


def _v(name: str, switch: str, **overrides) -> Variant:
    return Variant(name, switch, **overrides)


# The paper's ablations, one switch away from the baseline each (the claims they test: sinkhole.results.lab_claims).
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        _v("baseline", "pre-norm RMSNorm, SwiGLU FFN, softmax attention, fixed start token, loss on every position"),
        # FFN
        _v("gelu", "GeLU FFN (no gate), same intermediate size", model={"ffn": "gelu"}),
        _v("linear-ffn", "the FFN is one linear map (no nonlinearity)", model={"ffn": "linear"}),
        _v("attn-only", "no FFN at all", model={"ffn": "none"}),
        # normalization
        _v("sandwich", "sandwich norm: RMSNorm also after attention and FFN (Gemma-2/3)", model={"norm": "sandwich"}),
        _v("sandwich-qk", "sandwich norm and QK-norm", model={"norm": "sandwich", "qk_norm": True}),
        _v("qk-norm", "QK-norm: RMSNorm over head_dim on q and k (Qwen3, OLMo-2)", model={"qk_norm": True}),
        _v("dyt", "DynamicTanh instead of every RMSNorm (Zhu et al. 2025)", model={"norm": "dyt"}),
        # attention
        _v("gated", "sigmoid output gate on attention (Qiu et al. 2025)", model={"attention": "gated"}),
        _v("sigmoid", "sigmoid attention, no normalisation over keys", model={"attention": "sigmoid"}),
        _v("softpick", "softpick attention: rows may sum to < 1", model={"attention": "softpick"}),
        # head geometry: d_head with N_head fixed, and with d_head x N_head fixed
        _v("head-dim-half", "d_head halved, same number of heads", model={"head_dim_scale": 0.5}),
        _v("head-dim-double", "d_head doubled, same number of heads", model={"head_dim_scale": 2.0}),
        _v("heads-double", "twice the heads of half the size (d_head x N_head fixed)", model={"heads_scale": 2.0}),
        _v("heads-half", "half the heads of twice the size (d_head x N_head fixed)", model={"heads_scale": 0.5}),
        # data and loss
        _v("no-bos", "no fixed start token: position 0 holds an ordinary token", data={"bos": False}),
        _v("loss-from-quarter", "loss only on positions T/4..T", train={"loss_from": 0.25}),
        _v("loss-from-half", "loss only on positions T/2..T", train={"loss_from": 0.5}),
    ]
}
QUICK_VARIANTS = ("baseline", "sandwich", "gated", "no-bos")
DEFAULT_SEEDS = (0, 1, 2)
# The base model: the spike search (docs/lab.md) found no setting within the CPU budget in which the spike
# reaches the detector's threshold, so the base is the cheapest one in which the sink grows in every seed.
BASE_MODEL = {
    "num_hidden_layers": 1,
    "hidden_size": 32,
    "intermediate_size": 96,
    "num_attention_heads": 2,
    "head_dim": 32,
}
BASE_TRAIN = TrainConfig(steps=800, lr=1e-2, weight_decay=0.1)


@dataclass(frozen=True)
class LabSettings:
    model: dict = field(default_factory=lambda: dict(BASE_MODEL))  # TinyConfig overrides of the base model
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: BASE_TRAIN)
    variants: tuple[str, ...] = tuple(VARIANTS)
    seeds: tuple[int, ...] | None = DEFAULT_SEEDS  # train each variant once per seed; None: once, with train.seed
    threshold: float = core.DEFAULT_THRESHOLD
    epsilon: float = core.DEFAULT_EPSILON
    min_sink_rate: float = core.DEFAULT_MIN_SINK_RATE

    def runs(self) -> list[tuple[str, int | None]]:
        """The trainings: (variant, seed) for each seed, variant by variant; seed None: train.seed."""
        return [(v, s) for v in self.variants for s in (self.seeds or (None,))]

    def record(self) -> LabSettingsRecord:
        """The settings as lab.json holds them."""
        return LabSettingsRecord(
            model=base_model_dict(self.model),
            data=self.data.to_dict(),
            train=self.train.to_dict(),
            variants=list(self.variants),
            seeds=list(self.seeds) if self.seeds else None,  # absent without seeds: older runs resume
            threshold=self.threshold,
            epsilon=self.epsilon,
            min_sink_rate=self.min_sink_rate,
        )

    def to_dict(self) -> dict:
        return self.record().to_dict()


MODEL_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "head_dim",
    "norm",
    "qk_norm",
    "attention",
    "ffn",
    "rope_theta",
)


def base_model_dict(overrides: dict) -> dict:
    cfg = TinyConfig(**{k: v for k, v in overrides.items() if k in MODEL_KEYS})
    return {k: getattr(cfg, k) for k in MODEL_KEYS}


def quick_settings(**kw) -> LabSettings:
    """A few-minute look: four variants x three seeds, 300 steps."""
    return LabSettings(train=replace(BASE_TRAIN, steps=300, n_checkpoints=7), variants=QUICK_VARIANTS, **kw)


def variant_configs(settings: LabSettings, variant: Variant) -> tuple[TinyConfig, DataConfig]:
    """The variant's model and data: the base's with its overrides. The head switches are relative to
    the base (head_dim_scale: d_head x s; heads_scale: N_head x s and d_head / s)."""
    model = {**base_model_dict(settings.model), **variant.model}
    head_dim_scale, heads_scale = model.pop("head_dim_scale", 1.0), model.pop("heads_scale", 1.0)
    model["head_dim"] = max(2, int(round(model["head_dim"] * head_dim_scale / heads_scale)))
    model["num_attention_heads"] = max(1, int(round(model["num_attention_heads"] * heads_scale)))
    data = replace(settings.data, **variant.data)
    model["vocab_size"] = data.vocab_size
    model["max_position_embeddings"] = max(256, data.seq_len)
    return TinyConfig(**model), data


def environment() -> Environment:
    return Environment(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
        python=platform.python_version(),
        started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    )


def _write(path: Path, result: LabResult) -> None:
    from sinkhole.io import write_atomic

    write_atomic(path, json.dumps(result.to_dict(), indent=1, allow_nan=False))


def _resume(path: Path, settings: dict) -> list[VariantResult]:
    """Finished variants of an earlier run of the same settings in this directory (lab.json, and the
    variants ranks other than 0 finished under a launcher, in shards/<variant>.json)."""
    found = []
    shards = sorted((path.parent / SHARDS_DIR).glob("*.json")) if (path.parent / SHARDS_DIR).is_dir() else []
    for file in ([path] if path.is_file() else []) + shards:
        try:
            old = LabResult.from_dict(json.loads(file.read_text()))
        except (ValueError, KeyError, TypeError) as err:
            raise SinkholeError(f"{file} is not a lab result ({err}); choose another --out") from None
        subsets = ("variants", "seeds")  # a later run may ask for more or fewer of these
        if {k: v for k, v in old.settings.to_dict().items() if k not in subsets} != {
            k: v for k, v in settings.items() if k not in subsets
        }:
            raise SinkholeError(f"{file} holds a lab run with other settings; choose another --out")
        seeds = settings.get("seeds") or [None]
        found += [v for v in old.variants if v.finished and v.name in settings["variants"] and v.seed in seeds]
    return list({v.key: v for v in reversed(found)}.values())[::-1]  # the first of duplicates


def check_settings(settings: LabSettings) -> None:
    """One-line errors for settings a user can get wrong."""
    unknown = [v for v in settings.variants if v not in VARIANTS]
    if unknown:
        raise SinkholeError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if not settings.variants:
        raise SinkholeError("no variants to run")
    if len(set(settings.variants)) != len(settings.variants):
        raise SinkholeError(f"variants {list(settings.variants)} name one more than once: each runs once")
    if settings.train.steps < 1:
        raise SinkholeError("--steps must be at least 1")
    if settings.seeds is not None and (
        not settings.seeds or len(set(settings.seeds)) != len(settings.seeds) or min(settings.seeds) < 0
    ):
        raise SinkholeError(f"--seeds must be distinct integers >= 0, e.g. 0,1,2 (got {settings.seeds})")


def run_lab(
    settings: LabSettings,
    out_dir: str | Path | None = None,
    progress=None,
    log=None,
    save_weights: bool = False,
    world=None,
) -> LabResult | None:
    """Train and probe every variant in `settings.variants`; see the module docstring.

    progress(n): called per optimizer step (total = steps x variants). log(msg): one line per event.
    save_weights: keep each checkpoint's state_dict as out_dir/checkpoints/<variant>/step_<n>.pt.
    world (sinkhole.distributed; default: this process alone): the runs (variant, seed) are independent
    trainings, shared out by cost (steps x sequence length); rank 0 writes lab.json as it goes, another
    rank writes each run it trains to out_dir/shards/<variant>[-seed<s>].json; rank 0 assembles the
    result at the end (and returns it; the other ranks return None). progress counts every rank's
    steps on rank 0 (total = steps x runs).
    """
    from sinkhole.distributed import World

    world = world or World()
    check_settings(settings)
    sd = settings.to_dict()
    out = Path(out_dir) if out_dir is not None else None
    path = out / "lab.json" if out is not None else None
    world.agree(sd, "lab settings")
    done = {}
    if path is not None:

        def resume() -> list[dict]:
            out.mkdir(parents=True, exist_ok=True)
            return [v.to_dict() for v in _resume(path, sd)]

        found = world.broadcast(world.all_ok(resume, main_only=True))
        done = {r.key: r for r in map(VariantResult.from_dict, found)}
    tally = world.tally(progress)
    todo = [run for run in settings.runs() if run not in done]
    costs = [settings.train.steps * variant_configs(settings, VARIANTS[n])[1].seq_len for n, _ in todo]
    mine = [todo[k] for k in world.shard(costs)]
    result = LabResult(settings=settings.record(), environment=environment(), variants=[])
    for name, seed in settings.runs():
        tag = name if seed is None else f"{name}-seed{seed}"  # its files' name
        if (name, seed) in done:
            result.variants.append(done[name, seed])
            if world.is_main:
                tally.step(settings.train.steps)
            if log is not None:
                log(f"{done[name, seed].label}: already done in {path}")
            continue
        if (name, seed) not in mine:
            continue
        variant = VARIANTS[name]
        mcfg, dcfg = variant_configs(settings, variant)
        train_cfg = replace(settings.train, **variant.train, **({} if seed is None else {"seed": seed}))
        stream = TokenStream(dcfg, train_cfg.seed)
        model = build_model(mcfg, train_cfg.seed)
        vr = VariantResult(
            name,
            variant.switch,
            {k: getattr(mcfg, k) for k in MODEL_KEYS},
            dcfg.to_dict(),
            n_params(model),
            0.0,
            False,
            [],
            seed,
        )
        result.variants.append(vr)
        t0 = time.perf_counter()

        own = path if world.is_main or path is None else out / SHARDS_DIR / f"{tag}.json"
        mine_only = result if world.is_main else LabResult(result.settings, result.environment, [vr])

        def on_checkpoint(ck: Checkpoint, m, vr=vr, t0=t0, tag=tag, own=own, mine_only=mine_only) -> None:
            vr.checkpoints.append(ck)
            vr.seconds = time.perf_counter() - t0
            if path is not None:
                if save_weights:
                    d = out / "checkpoints" / tag
                    d.mkdir(parents=True, exist_ok=True)
                    tmp = d / f".step_{ck.step}.pt.tmp"
                    torch.save(m.state_dict(), tmp)
                    tmp.replace(d / f"step_{ck.step}.pt")
                _write(own, mine_only)

        probe_ids = stream.batch(PROBE_BATCH_INDEX, train_cfg.probe_batch)
        train(
            model,
            stream,
            train_cfg,
            probe_ids,
            on_checkpoint=on_checkpoint,
            progress=tally.step,
            threshold=settings.threshold,
            epsilon=settings.epsilon,
            min_sink_rate=settings.min_sink_rate,
        )
        vr.seconds, vr.finished = time.perf_counter() - t0, True
        if path is not None:
            _write(own, mine_only)
        if log is not None:
            f = vr.final
            log(
                f"{vr.label}: {vr.seconds:.0f} s, sink mass {f.sink_mass:.3f}, sink rate {f.sink_rate:.0%}, "
                f"spike score {f.spike_score:.1f}x"
            )
    tally.wait()
    parts = world.gather([v.to_dict() for v in result.variants])
    if not world.is_main:
        return None
    trained = {r.key: r for part in parts for r in map(VariantResult.from_dict, part)}
    result.variants = [trained[run] for run in settings.runs()]
    if path is not None:
        _write(path, result)
        shards = out / SHARDS_DIR
        for p in shards.glob("*.json") if shards.is_dir() else []:
            p.unlink()
        if shards.is_dir() and not any(shards.iterdir()):
            shards.rmdir()
    return result
