"""SinkProfile, the typed result of `sinkhole profile`: what a model's sinks and spikes look like, for
the tools that act on them (the KV cache, quantization hints). JSON schema "sinkhole.profile/1"; made
by `SinkDetector` (sinkhole.experiments.detector, rules in sinkhole.profiles.build) from a prompt
suite, shipped for the bundled models in sinkhole/data/profiles/<name>.json (read back by
sinkhole.profiles.profile.load_profile).
Its sections stay plain JSON objects (`profile.model["name"]`, `profile.sink_rule["positions"]`): they
are read by the cache, quant and kv-bench tools as the file's keys; `from_dict` checks their types.

Keys:
    schema          "sinkhole.profile/1"
    model           {name, architecture, weights_id, n_layers, n_heads, n_kv_heads, d_model}
    sink_rule       {positions: [int], token_texts: [str], description: str}
                    positions that sink in (nearly) every prompt, and token texts that sink wherever
                    they appear (the first newline, say)
    sink_tokens     [{position, text, attn_mass, sink_rate, frequency}]  frequency = share of prompts
    spike_channels  [{channel, typical_value, frequency}]
    step_up_layers, step_down_layers   [int]
    sink_heads      [[layer, head]]  heads whose mass on the top sink exceeds epsilon in most prompts
    pinned_slots    int   recommended number of KV slots to pin (StreamingLLM's "sinks")
    prompts         {source, count}
    settings        {threshold, epsilon, min_sink_rate, chat}
    streaming       optional: {n_sink, window, layer_kinds [L], scores, copy_scores, retrieval_scores
                    (each [L][Hkv]), queries, copy_queries, prompts}: per (layer, KV head), the mean
                    attention share on the first n_sink tokens + the last `window` keys (over all
                    queries / over copy queries) and the attention on the token to copy, over
                    prompts with long-range copies (sinkhole.profiles.stream_scores); prompts: {source,
                    text (the calibration half of the pydoc topics), seeds [first, last], count,
                    n_tokens, spans}; needle_scores [L][Hkv] (optional), needle_prompts,
                    needle_asked, needle {source, text, seed_base, lengths, span}: the attention
                    answers put on the needle they copy in NIAH / multi-key / passkey prompts from
                    the same calibration text (sinkhole.experiments.head_scores.measure_needle_scores);
                    HeadAwareSinkCache.from_profile keeps the heads that reach back in full;
                    loss (optional) {stream [L][Hkv], select [L][Hkv] or null, dense_nll, window,
                    n_sink, local_sinks, select_share, length, scored, samples, text, seeds}: the
                    nats each KV head costs alone streaming / selecting on calibration ppl samples
                    (sinkhole.kvbench.head_loss), and answers (optional, the same keys): the
                    same on the calibration needle prompts; what rank_by="loss" plans by
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from sinkhole.errors import SinkholeError
from sinkhole.results.base import Result

PROFILE_SCHEMA = "sinkhole.profile/1"
# The `window` of the streaming section by default: the recent keys of the band its scores measure
# (`profile --stream-window`); not the head-aware cache's window (sinkhole.cache.head_plan.DEFAULT_WINDOW).
SCORE_WINDOW = 256


@dataclass
class SinkProfile(Result):
    """A model's sink and spike profile; `to_dict()` is the profile file (every key written, `streaming`
    null when not computed), `from_dict` refuses a malformed one in one line."""

    model: dict
    sink_rule: dict
    sink_tokens: list[dict]
    spike_channels: list[dict]
    step_up_layers: list[int]
    step_down_layers: list[int]
    sink_heads: list[list[int]]
    pinned_slots: int
    prompts: dict
    settings: dict = field(default_factory=dict)
    streaming: dict | None = None  # per-head streaming scores (sinkhole.profiles.stream_scores), optional
    schema: str = PROFILE_SCHEMA

    @property
    def sink_positions(self) -> list[int]:
        return list(self.sink_rule.get("positions", []))

    def save(self, path: str | Path) -> None:
        from sinkhole.io import write_output

        write_output(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False), "profile")

    @classmethod
    def from_dict(cls, d: dict, source: str = "profile") -> SinkProfile:
        if not isinstance(d, dict) or d.get("schema") != PROFILE_SCHEMA:
            raise SinkholeError(f"{source} is not a sinkhole profile (expected schema '{PROFILE_SCHEMA}')")
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names - set(d) if n not in ("settings", "streaming"))
        if missing:
            raise SinkholeError(f"{source} is malformed: missing {', '.join(missing)}")
        problem = _malformed(d)
        if problem:
            raise SinkholeError(f"{source} is malformed: {problem}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def check(self) -> None:
        """Refuse a profile built by hand with values from_dict would refuse (NaN scores, say)."""
        problem = _malformed(self.to_dict())
        if problem:
            raise SinkholeError(f"the profile is malformed: {problem}")

    def check_config(self, config) -> None:
        """Refuse a profile whose recorded architecture or shape is not this model config's (the
        check a bare nn.Module allows; fields the profile does not record are not compared)."""
        config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        heads = getattr(config, "num_attention_heads", None)
        have = {
            "architecture": getattr(config, "model_type", None),
            "n_layers": getattr(config, "num_hidden_layers", None),
            "n_kv_heads": getattr(config, "num_key_value_heads", None) or heads,
            "d_model": getattr(config, "hidden_size", None),
        }
        diff = [k for k, v in have.items() if v is not None and self.model.get(k) not in (None, v)]
        if diff:
            mine = ", ".join(f"{k} {self.model[k]}" for k in diff)
            theirs = ", ".join(f"{k} {have[k]}" for k in diff)
            raise SinkholeError(
                f"profile is for {self.model.get('name', 'another model')} ({mine}), not this model ({theirs}): "
                "make one for it with `sinkhole profile`"
            )

    def check_model(self, weights_id: str | None = None, name: str | None = None) -> None:
        """Refuse a profile made for another model (compared by weights id when both have one)."""
        mine = self.model.get("weights_id")
        if weights_id and mine and weights_id != mine:
            raise SinkholeError(
                f"profile is for {self.model.get('name')} (weights {mine[:24]}...), not this model "
                f"(weights {weights_id[:24]}...)"
            )
        if not (weights_id and mine) and name and self.model.get("name") not in (None, name):
            raise SinkholeError(f"profile is for {self.model.get('name')}, not {name}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _malformed(d: dict) -> str | None:
    """What is wrong with a profile dict's types, or None."""
    if not _is_int(d["pinned_slots"]) or not 0 <= d["pinned_slots"] <= 65536:
        return "pinned_slots must be an integer in [0, 65536]"
    if not isinstance(d["model"], dict) or not isinstance(d["model"].get("name"), str):
        return "model must be an object with a name"
    rule = d["sink_rule"] if isinstance(d["sink_rule"], dict) else {}
    positions, texts = rule.get("positions"), rule.get("token_texts", [])
    if not isinstance(positions, list) or not all(_is_int(p) and p >= 0 for p in positions):
        return "sink_rule.positions must be a list of non-negative integers"
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return "sink_rule.token_texts must be a list of strings"
    for key in ("step_up_layers", "step_down_layers"):
        if not isinstance(d[key], list) or not all(_is_int(x) for x in d[key]):
            return f"{key} must be a list of integers"
    if not isinstance(d["sink_heads"], list) or not all(
        isinstance(h, list) and len(h) == 2 and all(_is_int(x) for x in h) for h in d["sink_heads"]
    ):
        return "sink_heads must be a list of [layer, head] pairs"
    for key, need in (("sink_tokens", "text"), ("spike_channels", "channel")):
        if not isinstance(d[key], list) or not all(isinstance(x, dict) and need in x for x in d[key]):
            return f"{key} must be a list of objects with '{need}'"
    if not isinstance(d["prompts"], dict):
        return "prompts must be an object {source, count}"
    return _malformed_streaming(d.get("streaming"))


def _malformed_streaming(st) -> str | None:
    """What is wrong with the optional `streaming` section, or None."""
    if st is None:
        return None
    if not isinstance(st, dict):
        return "streaming must be an object {n_sink, window, scores, ...}"
    for key in ("scores", "copy_scores", "retrieval_scores", "needle_scores"):
        if key != "scores" and st.get(key) is None:
            continue  # optional: older profiles have only `scores`
        if not _share_rows(st.get(key)):
            return f"streaming.{key} must be a list of per-layer lists of numbers in [0, 1]"
    for key in ("n_sink", "window"):
        if not _is_int(st.get(key)) or st[key] < 0:
            return f"streaming.{key} must be a non-negative integer"
    loss = st.get("loss")
    if loss is None:
        return None
    if not isinstance(loss, dict):
        return "streaming.loss must be an object {stream, select, ...}"
    answers = loss.get("answers")
    if answers is not None and not isinstance(answers, dict):
        return "streaming.loss.answers must be an object {stream, select, ...}"
    for name, part in (("loss", loss), ("loss.answers", answers)):
        for key in ("stream", "select") if part is not None else ():
            if (key == "stream" or part.get(key) is not None) and not _share_rows(part.get(key), None, None):
                return f"streaming.{name}.{key} must be a list of per-layer lists of numbers (nats)"
    return None


def _share_rows(rows, lo: float | None = 0.0, hi: float | None = 1.0) -> bool:
    """A non-empty list of non-empty lists of finite numbers in [lo, hi] (default: shares of attention)."""
    return (
        isinstance(rows, list)
        and bool(rows)
        and all(
            isinstance(row, list)
            and row
            and all(
                isinstance(x, (int, float))
                and not isinstance(x, bool)
                and math.isfinite(x)
                and (lo is None or x >= lo)
                and (hi is None or x <= hi)
                for x in row
            )
            for row in rows
        )
    )
