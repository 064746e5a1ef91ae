"""The HTML report's Mechanism section: the paper's chain for this model, one figure per link.

`mechanism_view(mech, model)` turns the typed mechanism sections (sinkhole.results.mechanism; a
`mechanism` dict read back from a file goes through `Mechanism.from_dict` first) into the compact data
the section draws; `static/mechanism.js` draws it. The order follows "The Spike, the Sparse and the
Sink": which tokens spike -> the lifecycle over the 2L blocks -> the spike channels -> the quadratic
amplifier at the step-up FFN -> the norm that makes the spike sparse -> the sink keys' low-dimensional
subspace and the heads that aim at it -> what breaks when the spike or the sink is taken away. Every
sentence of the story is built from the numbers drawn beside it. The full section stays one click away
as a generic tree ("all numbers").
"""

from __future__ import annotations

from collections import Counter

from sinkhole.render.analyze_text import pct
from sinkhole.results.mechanism import Amplifier, Mechanism, Normalization
from sinkhole.results.report import ModelInfo

INTERVENTION_LABELS = {
    "none": "unchanged",
    "zero": "spike channels = 0",
    "mean": "spike channels = mean",
    "random_zero": "random channels = 0 (control)",
    "sink_masked": "sink masked",
}


REQUIRED = ("config", "targets", "summary", "lifecycle", "channels", "amplifier", "normalization", "sink_keys")


def designed(m) -> bool:
    """Whether `m` is a `sinkhole mechanism` section, typed or a dict read back (anything else gets the
    generic tree only)."""
    return isinstance(m, Mechanism) or (isinstance(m, dict) and all(isinstance(m.get(k), dict) for k in REQUIRED))


def as_mechanism(m: Mechanism | dict) -> Mechanism:
    """The typed sections of a designed section (see `designed`)."""
    return m if isinstance(m, Mechanism) else Mechanism.from_dict(m)


def _counts(d: dict, n: int) -> str:
    return ", ".join(f"{k} ({v} of {n})" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"


def story(m: Mechanism, model: ModelInfo) -> list[str]:
    """Plain sentences (the page sets them as text) that say what each figure shows for this model."""
    t, s, lcy, ch, amp, nrm, keys = (
        m.targets,
        m.summary,
        m.lifecycle,
        m.channels,
        m.amplifier,
        m.normalization,
        m.sink_keys,
    )
    n = t.n
    texts = Counter(x.text for x in t.tokens).most_common(2)
    who = " and ".join(f"{tx!r} ({k} of {n})" for tx, k in texts)
    out = [
        (
            f"No token passes the spike threshold (mean top score {s.spike_score:.1f}×), so the {n} "
            f"highest-scoring tokens stand in: {who}."
        )
        if t.fallback
        else (
            f"{n} spike tokens over {m.config.n_prompts} prompts: {who}; spike score {s.spike_score:.1f}× "
            f"the median token, top |h| {s.top_abs_over_median:.0f}× the typical token's largest entry."
        )
    ]
    out.append(
        f"Lifecycle: the residual norm rises at {_counts(lcy.rise_counts, n)} and falls at "
        f"{_counts(lcy.fall_counts, n)}; the plateau lasts {lcy.plateau_blocks_mean:.1f} of "
        f"{2 * model.n_layers} blocks."
    )
    vals = [f"{c} ({v:,.0f})" for c, v in zip(ch.channels, ch.plateau_value) if v is not None]
    out.append(f"Spike channels at the step-up layer {t.step_up_layer}: " + (", ".join(vals) or "none") + ".")
    if isinstance(amp, Amplifier) and amp.channels:
        a = amp.channels[0]
        gain = (amp.post_block_gain or [None])[0]
        out.append(
            f"Amplifier: ‖U_{a.channel}‖_F of the step-up FFN is rank {a.fro_rank} of "
            f"{amp.n_channels} output channels ({a.fro_over_median:.1f}× the median); "
            f"the spike tokens' inputs align with its top eigenvector s* (|cos| {a.alignment_spike or 0:.2f} "
            f"vs {a.alignment_other or 0:.2f} for other tokens)"
            + (
                f"; the post-FFN norm multiplies the block's output by {gain:.3g}×."
                if gain and abs(gain - 1) > 1e-3
                else "."
            )
        )
    if isinstance(nrm, Normalization):
        out.append(
            f"Norm: the spike channels hold {pct(nrm.before.spike_sparsity)} of the spike token's squared "
            f"mass entering the step-up layer and {pct(nrm.after.spike_sparsity)} after it: RMSNorm leaves a "
            f"sparse, near-constant vector."
        )
    else:
        out.append(f"Norm: {nrm.reason}.")
    if keys.mean_sink_pr is not None:
        out.append(
            f"Sink keys span {keys.mean_sink_pr:.2f} effective dimensions (participation ratio) against "
            f"{keys.mean_other_pr:.2f} for other keys; {keys.n_sink_heads} of {keys.n_heads} heads "
            f"give the sink more than ε = {m.config.epsilon} of their attention."
        )
    iv = m.interventions
    if iv:
        parts = [f"{INTERVENTION_LABELS.get(k, k)} {v:,.2f}" for k, v in iv.perplexity.items() if v is not None]
        out.append(f"Perplexity on {iv.n_tokens} tokens: " + ", ".join(parts) + ".")
    return out


def _mean_rows(x) -> list | None:
    """[L][K] -> [L] mean over the inner list (None entries ignored)."""
    if not x:
        return None
    out = []
    for row in x:
        vals = [v for v in (row if isinstance(row, list) else [row]) if v is not None]
        out.append(sum(vals) / len(vals) if vals else None)
    return out


AMPLIFIER_KEYS = (
    "channel",
    "fro_norm",
    "fro_rank",
    "fro_over_median",
    "top_eigenvalues",
    "alignment_spike",
    "alignment_other",
    "dominance",
)


def _why(result, measured: type) -> str:
    """The sentence a panel shows when its analysis did not apply ("" when it was measured)."""
    return "" if isinstance(result, measured) else result.reason[:1].upper() + result.reason[1:] + "."


def mechanism_view(m: Mechanism, model: ModelInfo) -> dict:
    """The data static/mechanism.js draws (html_data.view rounds it to 4 significant digits)."""
    L, H = model.n_layers, model.n_heads
    lcy, ch, amp, nrm, keys = m.lifecycle, m.channels, m.amplifier, m.normalization, m.sink_keys
    why_amp, why_nrm = _why(amp, Amplifier), _why(nrm, Normalization)
    amp = amp if isinstance(amp, Amplifier) else None
    nrm = nrm if isinstance(nrm, Normalization) else None
    traces = [
        {
            "label": f"prompt {t.prompt} #{t.position} {t.text}",
            "blocks": t.trace.blocks,
            "norm": t.trace.resid_norm,
            "rise": t.rise,
            "fall": t.fall,
        }
        for t in lcy.tokens
        if t.trace
    ]
    grid = [[0] * H for _ in range(L)]
    for layer, head in keys.sink_heads or []:
        if 0 <= layer < L and 0 <= head < H:
            grid[layer][head] = 1
    kv, qa = keys.per_layer_kv_head, keys.query_alignment
    v = {
        "story": story(m, model),
        "step_up": m.targets.step_up_layer,
        "fallback": m.targets.fallback,
        "lifecycle": traces,
        "channels": {"channels": ch.channels, "values": ch.value_by_layer, "plateau": ch.plateau_value},
        "amplifier": {
            "top_channels": amp.fro_norm_top_channels if amp else None,
            "top_values": amp.fro_norm_top_values if amp else None,
            "median": amp.fro_norm_median if amp else None,
            "n_channels": amp.n_channels if amp else model.d_model,
            "per": [{k: getattr(c, k) for k in AMPLIFIER_KEYS} for c in (amp.channels if amp else [])],
            "why": why_amp,
        },
        "norm": {
            "labels": ["entering the step-up layer", "after it"],
            "spike": [nrm.before.spike_sparsity, nrm.after.spike_sparsity] if nrm else [None, None],
            "other": [nrm.before.other_sparsity, nrm.after.other_sparsity] if nrm else [None, None],
            "why": why_nrm,
        },
        "keys": {
            "sink_pr": _mean_rows(kv.sink_pr),
            "other_pr": _mean_rows(kv.other_pr),
            "energy": _mean_rows(qa.energy_share),
            "random": _mean_rows(qa.random_share),
            "n_sink": keys.n_sink_keys,
            "n_other": keys.n_other_keys,
        },
        "heads": {
            "grid": grid,
            "n": keys.n_sink_heads,
            "total": keys.n_heads,
            "epsilon": m.config.epsilon,
        },
        "interventions": None,
    }
    iv = m.interventions
    if iv:
        ppl = {k: x for k, x in iv.perplexity.items() if x is not None}
        v["interventions"] = {
            "labels": [INTERVENTION_LABELS.get(k, k) for k in ppl],
            "keys": list(ppl),
            "ppl": list(ppl.values()),
            "n_tokens": iv.n_tokens,
            "text": iv.text,
        }
    if m.vocab_sweep:
        vs = m.vocab_sweep
        v["story"].append(
            f"Vocabulary sweep: {pct(vs.spike_share)} of {vs.n_tokens:,} tokens spike when alone at position 0."
        )
    return v


MECH_HTML = """<section id="mechanism"><h2>Mechanism <button class="def" data-def="def-mechanism">?</button></h2>
<p class="hint">The paper's chain measured on this model over the mechanism's prompts (the figures above show prompt 0
only). Definitions: docs/mechanism.md.</p>
<ol id="mech-story" class="story"></ol>
<div class="mgrid">
<div><h3>1. Lifecycle</h3><p class="hint">‖r_b‖ of the traced spike tokens after each of the 2L blocks (attention, FFN):
rise, plateau, fall.</p><div id="mech-lifecycle" class="fig half"></div></div>
<div><h3>2. Spike channels</h3><p class="hint">h_l[t, c] of the spike channels, mean over the spike tokens, from
the step-up layer on.</p><div id="mech-channels" class="fig half"></div></div>
<div><h3>3. Quadratic amplifier</h3><p class="hint">‖U_k‖_F of the step-up FFN for its 8 largest output channels
and the spike channels (each in its colour, the same in every figure of this page; other channels grey)
against the median channel; right: the eigenvalues of S_k of each spike channel.</p>
<div id="mech-amplifier" class="fig half"></div></div>
<div><h3>4. Post-norm sparsity</h3><p class="hint">Share of the norm output's squared mass in the spike channels,
spike tokens vs a sample of other tokens.</p><div id="mech-norm" class="fig half"></div></div>
<div><h3>5. Sink-key subspace</h3><p class="hint">Effective dimension (participation ratio) of sink keys vs other keys
per layer (mean over KV heads); query energy in the sink-key subspace vs a random subspace.</p>
<div id="mech-keys" class="fig half"></div></div>
<div><h3>6. Sink heads</h3><p class="hint">Heads whose attention mass on the sink tokens exceeds ε (mean over
prompts).</p><div id="mech-heads" class="fig half"></div></div>
<div><h3>7. Interventions</h3><p class="hint">Perplexity of a fixed text with the spike or the sink taken away
(log scale).</p><div id="mech-interventions" class="fig half"></div></div>
</div>
<details class="group"><summary>all numbers (the report's <code>mechanism</code> section)</summary>
<div id="mech-raw"></div></details></section>"""  # noqa: E501 (markup)
