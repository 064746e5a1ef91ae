"""The HTML report without a browser: embedded data equals the report and capture, escaping, size budget,
the per-key fallback, generic sections, and the CLI end to end on SmolLM2 (integration)."""

import json
import re

import numpy as np
import pytest
from conftest import tiny_gemma3, tiny_llama, wrap

from sinkhole.analysis.core import analyze
from sinkhole.probe.capture import Capture, ModelInfo
from sinkhole.probe.probe import ModelProbe
from sinkhole.render import html
from sinkhole.render.html_data import MAPS_MAX_BYTES, maps_plan, rnd, to_nodes, unpack

SCRIPT_TAG = "<script>alert(1)</script>"
IMG_TAG = '"><img src=x onerror=alert(1)>'
SIZE_BUDGET = 8_000_000  # bytes, for a 512-token SmolLM2 report
IDS = [5, 17, 3, 42, 8, 8, 91, 23, 11, 60, 2, 7]


def page_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="sinkhole-data">(.*?)</script>', page, re.S)
    assert m, "no embedded data"
    return json.loads(m.group(1))


def injected_capture(make=tiny_llama, ids=IDS, name="tiny"):
    cap = ModelProbe(wrap(make(), name=name), maps_max_len=html.MAPS_MAX_LEN, top_k=4).run(ids)
    cap.tokens[1], cap.tokens[2], cap.tokens[3] = SCRIPT_TAG, IMG_TAG, "</script><!-- & \u2028"
    return cap


def test_embedded_data_matches_report_and_capture():
    cap = injected_capture(tiny_gemma3)
    r = analyze(cap)
    d = r.to_dict()
    v = page_data(html.render_html(r))
    assert v["tokens"] == cap.tokens and v["T"] == len(IDS) and (v["L"], v["H"]) == (2, 4)
    np.testing.assert_allclose(v["mass"], d["sinks"]["per_token_mass"], rtol=1e-3)
    np.testing.assert_allclose(v["heads"], d["heads"]["mass_on_top_sink"], rtol=1e-3)
    np.testing.assert_allclose(v["resid_norm"], cap.resid_norm, rtol=1e-3)
    rows, cols = np.tril_indices(len(IDS))
    maps = unpack(v["maps"])  # sqrt-scale bytes: |p - p'| <= |s - s'| (s + s') <= 1/255
    np.testing.assert_allclose(maps, cap.attn_maps.astype(np.float64)[..., rows, cols], atol=1 / 255 + 1e-6)
    np.testing.assert_allclose(unpack(v["alpha"]), cap.attn_mass, rtol=1e-3, atol=1e-7)  # float16
    assert np.abs(cap.attn_maps[..., np.triu_indices(len(IDS), 1)[0], np.triu_indices(len(IDS), 1)[1]]).max() == 0


def test_spike_channel_values_follow_top_k():
    cap = injected_capture()
    ch = page_data(html.render_html(analyze(cap)))["channels"]
    assert ch["k"] == 4 and ch["channels"]
    for t in range(len(IDS)):
        for ci, c in enumerate(ch["channels"]):
            for l in range(2):
                hit = np.flatnonzero(cap.resid_top_channels[l, t] == c)
                got = ch["values"][t][ci][l]
                if hit.size:
                    assert got == pytest.approx(float(cap.resid_top_values[l, t, hit[0]]), rel=1e-3)
                else:
                    assert got is None  # below top-K: not recorded, drawn as a gap


def test_untrusted_tokens_are_escaped_everywhere():
    cap = injected_capture(name="<script>alert(2)</script>")
    page = html.render_html(analyze(cap))
    for raw in (SCRIPT_TAG, IMG_TAG, "alert(2)</script>", "<img", "<!-- &"):
        assert raw not in page
    assert page.lower().count("</script") == 3  # data, plotly.js, our script: nothing closed early
    assert "<title>sinkhole report: &lt;script&gt;alert(2)&lt;/script&gt;</title>" in page
    assert page_data(page)["tokens"][1:4] == [SCRIPT_TAG, IMG_TAG, "</script><!-- & \u2028"]


def test_self_contained_no_network():
    cap = injected_capture()
    page = html.render_html(analyze(cap))
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert not re.search(r"<link[^>]*\bhref=[\"']?(https?:)?//", page)
    assert "Plotly" in page and len(page) > 3_000_000  # plotly.js is inlined


def test_definitions_come_from_core_and_cards_link_to_them():
    from sinkhole.analysis import core

    page = html.render_html(analyze(injected_capture()).to_dict())
    anchors = set(re.findall(r'data-def=[\'"]([\w-]+)[\'"]', page))
    assert anchors and all(f'id="{a}"' in page for a in anchors)
    for bullet, shown in (
        ("spike score: S[t] = N[t] / median_s N[s]", "<b>spike score</b>: S[t] = N[t] / median<sub>s</sub> N[s]"),
        ("its sink rate: share of (l, h)", "<b>its sink rate</b>: share of (l, h)"),
    ):
        assert bullet in core.__doc__ and shown in page  # the docstring's text, typeset (not raw)


def test_definitions_typeset():
    assert (
        html.math_html("alpha_{l,h}(k) >= epsilon and ||h_l[t]||_2")
        == "α<sub>l,h</sub>(k) ≥ ε and ‖h<sub>l</sub>[t]‖<sub>2</sub>"
    )
    assert html.math_html("`min_sink_rate` and min_sink_rate, *not* a<b>") == (
        "<code>min_sink_rate</code> and min_sink_rate, <em>not</em> a&lt;b&gt;"
    )


def test_long_input_gets_per_key_view_and_probe_keeps_no_maps():
    T = html.MAPS_MAX_LEN + 1
    ids = [(i * 7) % 97 + 1 for i in range(T)]
    cap = ModelProbe(wrap(tiny_llama()), maps_max_len=html.MAPS_MAX_LEN, top_k=4).run(ids)
    assert cap.attn_maps is None  # the probe never kept (L, H, T, T) for this input
    v = page_data(html.render_html(analyze(cap)))
    assert v["maps"] is None and unpack(v["alpha"]).shape == (2, 4, T)
    assert v["maps_note"].startswith("Per-key view") and str(html.MAPS_MAX_LEN) in v["maps_note"]


def test_maps_plan_respects_byte_budget():
    assert maps_plan(30, 9, html.MAPS_MAX_LEN, True)[0]  # SmolLM2 at the longest mapped input fits
    big_heads = MAPS_MAX_BYTES // (html.MAPS_MAX_LEN * (html.MAPS_MAX_LEN + 1) // 2) + 1
    ok, note = maps_plan(1, big_heads, html.MAPS_MAX_LEN, True)
    assert not ok and "MB" in note
    assert not maps_plan(2, 2, 10, False)[0]


def test_render_without_capture():
    d = analyze(injected_capture()).to_dict()  # a report read back from JSON has no `detail`
    page = html.render_html(d)
    v = page_data(page)
    assert v["maps"] is None and v["alpha"] is None and v["channels"] is None
    assert "without its Capture" in v["maps_note"]


def synthetic_capture(L=30, H=9, T=512, K=8, seed=0, maps=False) -> Capture:
    """SmolLM2-shaped arrays with full-precision random values (rounding cannot shorten them)."""
    rng = np.random.default_rng(seed)
    a = rng.random((L, H, T, T)).astype(np.float32) if maps else None
    if a is not None:
        a = np.tril(a)
        a = (a / a.sum(-1, keepdims=True)).astype(np.float16)
    alpha = rng.random((L, H, T)).astype(np.float32)
    info = ModelInfo("synthetic", "llama", "llama", "pre", L, H, 3, 576, 64)
    return Capture(
        info,
        list(range(T)),
        [f" w{i}" for i in range(T)],
        rng.random((L, T)) * 100 + 1,
        rng.integers(0, 576, (L, T, K)),
        rng.normal(size=(L, T, K)) * 50,
        rng.random((L, T)),
        rng.random((L, T)),
        rng.random(T),
        alpha,
        a,
    )


@pytest.mark.parametrize("T,maps", [(512, False), (html.MAPS_MAX_LEN, True)])
def test_size_budget_smollm2_shapes(T, maps):
    cap = synthetic_capture(T=T, maps=maps)
    page = html.render_html(analyze(cap))
    assert (page_data(page)["maps"] is not None) == maps
    assert len(page.encode()) < SIZE_BUDGET


def test_generic_nodes():
    nodes = to_nodes(
        {
            "a": 1,
            "b": "x",
            "layers": [3, 11],
            "curve": list(range(20)),
            "grid": [[1.0, 2.0], [3.0, 4.0]],
            "rows": [{"k": 1, "v": 0.5}, {"k": 2, "w": None}],
            "nested": {"deep": {"x": float("nan")}},
            "mixed": [{"a": [1, [2]]}, 3],
        }
    )
    kinds = {n.get("title", ""): n["kind"] for n in nodes}
    assert nodes[0] == {"kind": "table", "rows": [["a", 1], ["b", "x"], ["layers", [3, 11]]], "more": 0}
    assert kinds["curve"] == "series" and kinds["grid"] == "matrix" and kinds["rows"] == "records"
    rec = next(n for n in nodes if n.get("title") == "rows")
    assert rec["columns"] == ["k", "v", "w"] and rec["rows"] == [[1, 0.5, None], [2, None, None]]
    assert kinds["nested"] == "group" and kinds["mixed"] == "group"
    assert rnd(float("nan")) is None and rnd(123456.789) == 123500 and rnd(0.000123456) == 0.0001235


def test_mechanism_and_eval_sections_are_embedded():
    cap = injected_capture()
    r = analyze(cap)
    r.extra["mechanism"] = {"per_layer": [0.1, 0.2, 0.4], "summary": {"score": 1.5, "note": SCRIPT_TAG}}
    r.extra["eval"] = [{"task": "x", "ppl": 3.2}]
    r.extra["custom"] = {"v": 1}
    page = html.render_html(r)
    secs = page_data(page)["sections"]
    assert [s["key"] for s in secs] == ["mechanism", "eval", "custom"]
    assert SCRIPT_TAG not in page


@pytest.mark.integration
def test_cli_writes_reports_short_and_512_tokens(tmp_path):
    from pydoc_data.topics import topics

    from sinkhole.cli.main import main

    short = tmp_path / "short.html"
    assert (
        main(["analyze", "--prompt", "Explain the theory of relativity in simple terms.", "--output", str(short)]) == 0
    )
    v = page_data(short.read_text())
    assert v["maps"] is not None and v["T"] <= html.MAPS_MAX_LEN

    words = topics["assignment"].split(" ")
    prompt_file = tmp_path / "long.txt"
    prompt_file.write_text(" ".join(words[:312]))  # ~512 tokens with SmolLM2's chat template
    long = tmp_path / "long.html"
    assert main(["analyze", "--prompt-file", str(prompt_file), "--output", str(long)]) == 0
    v = page_data(long.read_text())
    assert 400 <= v["T"] <= 700 and v["maps"] is None and v["alpha"] is not None
    assert long.stat().st_size < SIZE_BUDGET
