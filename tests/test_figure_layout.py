"""Figure specs that a person reads wrong when they are off: the page's one colour per channel, the stream
plot's legend and coinciding lines, the eval distributions' integer counts and tick labels. (The pages
themselves are checked in a real browser by tests/test_html_browser.py.)"""

import itertools
import math

import pytest

from sinkhole.render.html_data import CHANNEL_PALETTE, OTHER_CHANNEL, _page_channels, channel_colours


def test_channel_colours_one_per_channel_first_seen_first():
    got = channel_colours([507, 247, 14], None, [14, 507, 99], [])
    assert got == {
        "507": CHANNEL_PALETTE[0],
        "247": CHANNEL_PALETTE[1],
        "14": CHANNEL_PALETTE[2],
        "99": CHANNEL_PALETTE[3],
    }
    assert OTHER_CHANNEL not in CHANNEL_PALETTE and len(set(CHANNEL_PALETTE)) == len(CHANNEL_PALETTE)


def test_page_channels_cover_every_figure_that_draws_a_channel():
    v = {
        "channels": {"channels": [247, 507]},
        "mechanism": {"channels": {"channels": [507, 14]}, "amplifier": {"per": [{"channel": 507}, {"channel": 3}]}},
    }
    assert channel_colours(*_page_channels(v)).keys() == {"247", "507", "14", "3"}
    assert channel_colours(*_page_channels({"channels": None})) == {}


def test_page_data_carries_the_colour_map():
    from conftest import tiny_llama, wrap

    from sinkhole.analysis.core import analyze
    from sinkhole.probe.probe import ModelProbe
    from sinkhole.render.html_data import view

    v = view(analyze(ModelProbe(wrap(tiny_llama()), top_k=4).run([5, 17, 3, 42, 8, 8, 91])))
    chans = v["channels"]["channels"]
    assert chans and [v["channel_colours"][str(c)] for c in chans] == list(CHANNEL_PALETTE[: len(chans)])


# --- matplotlib: layout read from the drawn figure -------------------------------------------------


def _overlap(a, b, tol=1.0) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tol and min(a.y1, b.y1) - max(a.y0, b.y0) > tol


def _tick_labels(ax, axis: str):
    """The drawn, non-empty tick labels of one axis inside its view limits."""
    ticks = ax.get_xticks() if axis == "x" else ax.get_yticks()
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    return [(t, lab) for t, lab in zip(ticks, labels) if lo <= t <= hi and lab.get_visible() and lab.get_text()]


def _text_collisions(fig) -> list[str]:
    """Tick labels of one axis on each other, and any two texts of different roles (tick labels of
    each axis, axis labels, titles) of the figure on each other."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    texts, bad = [], []
    for i, ax in enumerate(fig.axes):
        for axis in ("x", "y"):
            labs = [lab for _, lab in _tick_labels(ax, axis)]
            boxes = [lab.get_window_extent(r) for lab in labs]
            for (la, a), (lb, b) in itertools.combinations(zip(labs, boxes), 2):
                if _overlap(a, b):
                    bad.append(f"axes {i} {axis} ticks {la.get_text()!r} / {lb.get_text()!r}")
            texts += [(f"{i}{axis}ticks", lab) for lab in labs]
        texts += [(f"{i}xlabel", ax.xaxis.label), (f"{i}ylabel", ax.yaxis.label), (f"{i}title", ax.title)]
    texts = [(g, t) for g, t in texts if t.get_visible() and t.get_text()]
    for (ga, a), (gb, b) in itertools.combinations(texts, 2):
        if ga != gb and _overlap(a.get_window_extent(r), b.get_window_extent(r)):
            bad.append(f"{a.get_text()!r} ({ga}) / {b.get_text()!r} ({gb})")
    return bad


def _stream_result(same: bool):
    from sinkhole.results.stream import StreamMethod, StreamResult, StreamSettings

    n, cache = 300, 64
    base = [2.0 + math.sin(i / 9) for i in range(n)]
    methods = {
        "dense": base,
        "window": [v + (1.0 if i > cache else 0) for i, v in enumerate(base)],
        "sinks": [v + 0.1 for v in base],
        "profile": [v + (0.1 if same else 0.6) for v in base],
    }
    labels = {
        "dense": "dense",
        "window": "window only",
        "sinks": "sinks + window",
        "profile": "profile sinks + window",
    }
    sample = list(range(80, n, 20))
    out = {k: {"label": labels[k], "nll": v, "sink_positions": [0]} for k, v in methods.items()}
    out["recompute"] = {
        "label": "recomputed",
        "nll": [base[i] if i + 1 in sample else None for i in range(n)],
        "sink_positions": [],
    }
    methods = {k: StreamMethod(k, m["label"], cache, m["sink_positions"], m["nll"], 0.0) for k, m in out.items()}
    settings = StreamSettings(recompute_samples=len(sample), dense_upto=n, dtype="float32", device="cpu")
    return StreamResult("tiny", "", n, cache, 1, sample, methods, settings)


@pytest.mark.parametrize("same", [True, False])
def test_stream_plot_legend_off_the_lines_and_coinciding_lines_both_seen(same):
    from sinkhole.render.png import pyplot
    from sinkhole.render.stream_figures import stream_figure

    fig = stream_figure(_stream_result(same))
    try:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        (ax,) = fig.axes
        assert fig.legends and not _overlap(fig.legends[0].get_window_extent(r), ax.get_window_extent(r))
        lines = {line.get_label().split(" (")[0].split(" [")[0]: line for line in ax.get_lines()}
        sinks, profile = lines["sinks + window"], lines["profile sinks + window"]
        # where they coincide, the profile's thin line runs on top of a band twice as wide, never under it
        assert sinks.get_linewidth() >= 3 * profile.get_linewidth() and sinks.get_zorder() < profile.get_zorder()
        assert ("on top of sinks + window" in profile.get_label()) == same
        assert _text_collisions(fig) == []
    finally:
        pyplot().close(fig)


# (sink mass of the first prompt, step between prompts): a spread of 25 points, and one of 0.12 points whose
# ticks need three decimals ("60.120%") and collided at matplotlib's default tick count
@pytest.mark.parametrize("mass, step", [(0.351, 0.023), (0.60123, 0.00011)])
def test_eval_distributions_count_whole_prompts_and_labels_do_not_collide(tmp_path, monkeypatch, mass, step):
    import sinkhole.render.eval_figures as ef

    checked = {}

    def check(fig, path, dpi=90):  # instead of writing the PNG: read the drawn figure
        checked[path.name] = _text_collisions(fig)
        if path.name == "distributions.png":
            for ax in fig.axes:
                ticks = [t for t, _ in _tick_labels(ax, "y")]
                assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_xlabel(), ticks)

    monkeypatch.setattr(ef, "save_png", check)
    from sinkhole.results.eval import CategorySummary, ChannelSummary, EvalRow, EvalSpike, EvalSummary, MetricStats

    spike = EvalSpike(0, "a", 30.0, 1.0, 0, 0, [0], [], [], [1.0])
    rows = [
        EvalRow.from_dict(
            {
                "category": "cat",
                "n_tokens": 20 + 3 * i,
                "spike_score": 28.7 + 0.8 * i,  # few prompts over a narrow range: fractional counts before
                "sink_mass": mass + step * i,
                "sink_rate": mass + step * i,
                "n_spikes": 1,
                "spikes": [spike.to_dict()],
                "sinks": [{"position": 0, "text": "a", "attn_mass": mass, "sink_rate": 1.0}],
                **dict(index=i, spike_channels=[0], n_sinks=1, top_sink=None, sink_heads=[], jaccard=None),
                **dict(sink_attention_share=mass, tokens=[]),
            }
        )
        for i in range(12)
    ]
    stats = MetricStats(mean=1.0, std=0.1, min=1.0, max=1.0, n=12)
    summary = EvalSummary(
        run={},
        n_prompts=12,
        metrics={},
        per_category={"cat": CategorySummary(12, {k: stats for k in ("spike_score", "sink_mass")})},
        spike_channels=ChannelSummary(1, [0], 1.0, 1, []),
        top_sink_positions={},
        length_vs_sink_mass_r=0.5,
    )
    ef.write_figures(rows, summary, tmp_path)
    assert checked.keys() == set(ef.FIGURES)
    assert checked["distributions.png"] == []
