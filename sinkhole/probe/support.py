"""Which transformers architectures the probe supports, checked rather than claimed.

`check(model_type)` builds a tiny random float32 model of the type (`sinkhole.models.tiny`), runs
the probe on IDS and compares its attention mass alpha with eager attention's `output_attentions`
(alpha within ATOL on every attention layer). `sweep()` does it for every type in transformers'
causal-LM auto mapping; tests/test_architectures.py asserts on it and scripts/support_table.py
renders docs/architectures.md from it.

Statuses: "agrees" (alpha within ATOL), "differs" (largest difference), "fails" (the probe refused
with one SinkholeError line, given), "no_attention" (a pure SSM / RNN: nothing to compare; the probe
refuses with one line), "skipped" (cannot be built tiny here, or not decoder-only; reason given).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from sinkhole.errors import SinkholeError
from sinkhole.models.tiny import TinyUnavailable, causal_lm_types, tiny_model
from sinkhole.probe.hooks import attention_implementation
from sinkhole.probe.loading import LoadedModel
from sinkhole.probe.probe import ModelProbe

IDS = [3, 17, 5, 42, 8, 8, 91, 23, 11, 60]  # 10 tokens: longer than the tiny sliding window (6)
ATOL = 1e-4


@dataclass
class Support:
    model_type: str
    status: str  # agrees | differs | fails | no_attention | skipped
    detail: str = ""
    max_diff: float | None = None
    layout: str = ""  # layers path, norm style, attention path
    kinds: str = ""  # e.g. "attention, linear_attention"
    discovery: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class IdTokenizer:
    """Stands in for a tokenizer on tiny random models: prompts are token-id lists, tokens decode to '<id>'."""

    pad_token_id = 0
    eos_token = None
    chat_template = None

    def decode(self, ids):
        return "".join(f"<{i}>" for i in ids)


def eager_alpha(model, ids: list[int]) -> list[np.ndarray]:
    """alpha (H, T) of every layer that returns attention probabilities in eager mode."""
    with attention_implementation(model, "eager", optional=True), torch.inference_mode():
        out = model(torch.tensor([ids]), output_attentions=True, use_cache=False)
    T = len(ids)
    maps = [
        a
        for a in (
            getattr(out, "attentions", None) or []
        )  # (B, H, T, T) maps only: linear layers may return other things
        if isinstance(a, torch.Tensor) and a.dim() == 4 and a.shape[-2:] == (len(ids), len(ids))
    ]
    return [(a[0].float().sum(-2) / torch.arange(T, 0, -1)).numpy() for a in maps]


def check(model_type: str) -> Support:
    try:
        model = tiny_model(model_type)
    except TinyUnavailable as err:
        return Support(model_type, "skipped", str(err))
    try:
        with torch.inference_mode():
            model(torch.tensor([IDS]), use_cache=False)
    except Exception as err:  # noqa: BLE001 - the tiny model itself does not run: nothing to test
        return Support(
            model_type,
            "skipped",
            f"tiny model's own forward fails: {type(err).__name__}: "
            f"{str(err).splitlines()[0][:100] if str(err) else ''}",
        )
    try:
        lm = LoadedModel.wrap(model, IdTokenizer(), name=model_type)
        fam = lm.family
        probe = ModelProbe(lm)
        cap = probe.run(IDS)
    except SinkholeError as err:
        no_att = "no attention to measure" in str(err) and not eager_alpha_safe(model)
        return Support(model_type, "no_attention" if no_att else "fails", str(err))
    except Exception as err:  # noqa: BLE001 - a traceback here is a bug to report, as one line
        return Support(
            model_type, "fails", f"BUG {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
        )
    info = cap.model
    kinds = sorted(set(info.layer_kinds))
    layout = f"{fam.layers}, {fam.norm_style}, {info.attention_path}"
    row = Support(model_type, "fails", layout=layout, kinds=", ".join(kinds), discovery=info.discovery)
    share = None if cap.sink_share is None else float(np.nanmean(cap.sink_share))
    if info.learned_sinks:
        # transformers' eager functions disagree on whether output_attentions includes the sink in the
        # denominator (gpt-oss: yes; granite_swa: no). With the sink logits at -1e4 both conventions
        # coincide, so compare there; the share itself is tested against brute force in tests/test_discovery.py.
        with torch.no_grad():
            for m in model.modules():
                if isinstance(getattr(m, "sinks", None), torch.nn.Parameter):
                    m.sinks.fill_(-1e4)
        cap = probe.run(IDS)
    try:
        ref = eager_alpha(model, IDS)
    except Exception as err:  # noqa: BLE001
        row.detail = (
            f"eager reference failed: {type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''}"
        )
        return row
    att = [l for l in range(cap.attn_mass.shape[0]) if np.isfinite(cap.attn_mass[l]).any()]
    k = len(ref) // max(len(att), 1)
    if k > 1 and len(ref) == k * len(att):  # several attention sublayers per layer: heads side by side
        ref = [np.concatenate(ref[i * k : (i + 1) * k], axis=0) for i in range(len(att))]
    if len(ref) != len(att):
        row.detail = f"eager returned {len(ref)} attention maps, the probe measured {len(att)} attention layers"
        return row
    diff = max(float(np.nanmax(np.abs(cap.attn_mass[l, : r.shape[0]] - r))) for l, r in zip(att, ref))
    row.max_diff = diff
    row.status = "agrees" if diff <= ATOL else "differs"
    row.detail = f"max |alpha - eager| {diff:.1e}"
    if share is not None:
        row.detail += f"; learned sinks take {share:.1%} of attention"
    return row


def eager_alpha_safe(model) -> bool:
    """True when eager output_attentions returns at least one attention map."""
    try:
        return bool(eager_alpha(model, IDS[:4]))
    except Exception:  # noqa: BLE001
        return False


@contextlib.contextmanager
def quiet():
    """transformers' and torch's warnings about tiny configs are noise here."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
        hf_logging.set_verbosity(level)


def sweep(types: list[str] | None = None, progress=None) -> list[Support]:
    rows = []
    for mt in types or causal_lm_types():
        with quiet():
            rows.append(check(mt))
        if progress:
            progress(rows[-1])
    return rows
