"""SinkDetector: runs a prompt suite through a model (the eval's probe forwards) and builds its
`SinkProfile` with the pure rules of `sinkhole.profiles.build.build_profile` (documented there).

    profile = SinkDetector("smollm2-135m").detect()      # the built-in suite, chat as the model is used
    profile.save("smollm2.json")
"""

from __future__ import annotations

from collections.abc import Callable

from sinkhole.models.registry import DEFAULT_MODEL
from sinkhole.profiles.build import build_profile
from sinkhole.results.sink_profile import SinkProfile


class SinkDetector:
    """Runs a prompt suite through a model and summarises its sinks and spikes as a `SinkProfile`.

    Args:
        model: a ModelProbe, a LoadedModel, or anything `load_model` takes.
        prompts: a suite spec for `load_suite` ("builtin", .jsonl, .txt) or a `Suite`.
        limit: an evenly spaced subset of that many prompts.
        chat: None = the chat template when the tokenizer has one.
        progress: called with the number of prompts each batch finished.
        streaming: also measure per-head streaming scores (`sinkhole.experiments.head_scores`), with
            these keyword arguments of `streaming_section` ({} for the defaults); None skips them.
    """

    def __init__(
        self,
        model=DEFAULT_MODEL,
        prompts="builtin",
        limit: int | None = None,
        chat: bool | None = None,
        threshold: float | None = None,
        epsilon: float | None = None,
        min_sink_rate: float | None = None,
        progress: Callable[[int], None] | None = None,
        streaming: dict | None = None,
        world=None,
        **rules,
    ):
        from sinkhole.eval.runner import EvalSettings
        from sinkhole.probe.probe import ModelProbe

        self.probe = model if isinstance(model, ModelProbe) else ModelProbe(model)
        self.prompts, self.limit, self.progress, self.rules = prompts, limit, progress, rules
        self.streaming = streaming  # kwargs of streaming_section (n_sink, window, count, ...), None: skip
        self.world = world  # sinkhole.distributed: ranks that share the prompts; None: this process alone
        given = dict(threshold=threshold, epsilon=epsilon, min_sink_rate=min_sink_rate, chat=chat)
        self.settings = EvalSettings(**{k: v for k, v in given.items() if v is not None})

    def detect(self) -> SinkProfile | None:
        """The profile (under a launcher: on rank 0; the other ranks, which did their share, get None)."""
        from sinkhole.distributed import World
        from sinkhole.eval.runner import resolved_chat, run_eval
        from sinkhole.eval.suite import Suite, load_suite

        world = self.world or World()
        suite = self.prompts if isinstance(self.prompts, Suite) else load_suite(self.prompts, self.limit)
        self.settings.chat = resolved_chat(self.probe, self.settings.chat)  # recorded in the profile
        rows = run_eval(self.probe, suite, None, self.settings, progress=self.progress, world=world)
        streaming = None
        if self.streaming is not None:
            from sinkhole.experiments.head_scores import streaming_section

            streaming = streaming_section(self.probe.lm, **self.streaming, world=world)
        if not world.is_main:
            return None
        info = self.probe.info
        model = {
            k: getattr(info, k)
            for k in ("name", "architecture", "weights_id", "n_layers", "n_heads", "n_kv_heads", "d_model")
        }
        prompts = {"source": suite.source, "count": len(suite), "sha256": suite.sha256}
        profile = build_profile(rows, model, prompts, self.settings.numbers(), **self.rules)
        if streaming is not None:
            profile.streaming = streaming
        return profile
