"""The HTML report in headless Chromium: no console errors, figures drawn, clicks select, and untrusted token
text shown as text without executing anything. Needs `pip install selenium` and the Debian packages
`chromium` and `chromium-driver`; skipped (with the reason) when any is missing."""

import os
import shutil
import tempfile

import pytest
from conftest import tiny_llama, wrap

from sinkhole.analysis.core import analyze
from sinkhole.probe.probe import ModelProbe
from sinkhole.render import html

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]
SCRIPT_TAG = "<script>alert(1)</script>"
IMG_TAG = '"><img src=x onerror=alert(1)>'
BOLD = "<b>x</b>"  # plotly would render this tag (and drop the markup) if the page did not escape it
# installed before any page script: records any alert/confirm/prompt call instead of blocking
TRAP = (
    "window.__executed = [];"
    "['alert', 'confirm', 'prompt'].forEach(f => { window[f] = (m) => { window.__executed.push(f + ':' + m); }; });"
)


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.path.exists(path):
            return f"{path} not found (apt-get install {pkg})"
    return None


@pytest.fixture(scope="module")
def driver():
    why = _missing()
    if why:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    profile = tempfile.mkdtemp(prefix="sinkhole-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)  # a given driver: nothing is downloaded
    d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TRAP})
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop earlier pages' messages
    driver.get(path.as_uri())
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return !!(window.sinkhole && window.sinkhole.ready)"))


def severe(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@pytest.fixture(scope="module")
def short_page(tmp_path_factory):
    ids = [5, 17, 3, 42, 8, 8, 91, 23, 11, 60, 2, 7]
    cap = ModelProbe(wrap(tiny_llama(), name="tiny"), maps_max_len=html.MAPS_MAX_LEN, top_k=4).run(ids)
    cap.tokens[1], cap.tokens[2], cap.tokens[3] = SCRIPT_TAG, IMG_TAG, BOLD
    r = analyze(cap)
    r.extra["mechanism"] = {"per_layer": [0.1, 0.3, 0.2], "summary": {"verdict": IMG_TAG, "score": 2.5}}
    r.extra["eval"] = {"tasks": [{"task": "ppl", "value": 3.25}], "curve": [[1.0, 2.0], [3.0, 4.0]]}
    path = tmp_path_factory.mktemp("html") / "short.html"
    html.write_html(r, path)
    return path


@pytest.fixture(scope="module")
def long_page(tmp_path_factory):
    ids = [(i * 7) % 97 + 1 for i in range(html.MAPS_MAX_LEN + 20)]
    cap = ModelProbe(wrap(tiny_llama(), name="tiny"), maps_max_len=html.MAPS_MAX_LEN, top_k=4).run(ids)
    cap.tokens[:] = [f"<|im_start_{i}|>" for i in range(len(ids))]  # as long as real special tokens' labels
    path = tmp_path_factory.mktemp("html") / "long.html"
    html.write_html(analyze(cap), path)
    return path


def cell_offset(driver, fig, x, y) -> tuple[int, int]:
    """Pixel offset of data point (x, y) of a plotly figure from the element's centre (selenium's origin)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", fig)
    dx, dy = driver.execute_script(
        "const g = arguments[0], fl = g._fullLayout, r = g.getBoundingClientRect();"
        "return [fl.xaxis._offset + fl.xaxis.l2p(arguments[1]) - r.width / 2,"
        "        fl.yaxis._offset + fl.yaxis.l2p(arguments[2]) - r.height / 2];",
        fig,
        x,
        y,
    )
    return int(dx), int(dy)


def drawn(driver, fig_id: str) -> bool:
    """A plotly figure with its svg and a heatmap image (or at least one trace path) inside."""
    return driver.execute_script(
        "const g = document.getElementById(arguments[0]);"
        "return !!g && g.querySelectorAll('svg.main-svg').length > 0 &&"
        " g.querySelectorAll('.hm image, .scatterlayer path.js-line, .barlayer path, canvas').length > 0;",
        fig_id,
    )


def test_renders_without_console_errors(driver, short_page):
    open_page(driver, short_page)
    assert severe(driver) == []
    for fig in ("fig-tokens", "fig-heads", "fig-attn", "fig-resid", "fig-layers", "fig-channels"):
        assert drawn(driver, fig), fig
    assert (
        driver.execute_script(
            "return document.querySelectorAll('#fig-heads .hm image, #fig-attn .hm image,"
            " #fig-resid .hm image').length"
        )
        == 3
    )
    assert driver.execute_script("return document.querySelectorAll('#sections .gen-fig .main-svg').length") >= 2
    assert driver.find_element("id", "section-mechanism").is_displayed()


def test_injection_shows_as_text_and_executes_nothing(driver, short_page):
    from selenium.webdriver.common.action_chains import ActionChains

    open_page(driver, short_page)
    assert driver.execute_script("return window.__executed") == []
    assert driver.title == "sinkhole report: tiny"
    assert driver.execute_script("return document.querySelectorAll('img').length") == 0
    assert driver.execute_script("return document.querySelectorAll('[onerror]').length") == 0
    assert driver.execute_script("return document.scripts.length") == 3
    strip = [e.text for e in driver.find_elements("css selector", "#strip .tok")]
    assert strip[1] == SCRIPT_TAG and strip[2] == IMG_TAG
    ticks = driver.execute_script(
        "return [...document.querySelectorAll('#fig-attn .xtick text')].map(e => e.textContent)"
    )
    assert "#3 " + BOLD in ticks and any("<script>al" in t for t in ticks) and any('"><img src' in t for t in ticks)
    # hover over query 2 x key 1 of the attention map: plotly shows both tokens literally
    fig = driver.find_element("id", "fig-attn")
    ActionChains(driver).move_to_element_with_offset(fig, *cell_offset(driver, fig, 1, 2)).perform()
    hover = driver.execute_script("return document.querySelector('#fig-attn .hoverlayer').textContent")
    assert SCRIPT_TAG[:10] in hover and IMG_TAG[:10] in hover
    ActionChains(driver).move_to_element_with_offset(fig, *cell_offset(driver, fig, 3, 3)).perform()
    hover = driver.execute_script("return document.querySelector('#fig-attn .hoverlayer').textContent")
    assert hover.count(BOLD) == 2  # query and key
    assert driver.execute_script("return window.__executed") == [] and severe(driver) == []


def test_packed_arrays_decode_like_python(driver, short_page):
    import json
    import re

    import numpy as np

    from sinkhole.render.html_data import unpack

    data = json.loads(re.search(r'id="sinkhole-data">(.*?)</script>', short_page.read_text(), re.S).group(1))
    open_page(driver, short_page)
    for name in ("maps", "alpha"):
        got = driver.execute_script(f"return Array.from(window.sinkhole.arrays.{name})")
        np.testing.assert_allclose(got, unpack(data[name]).ravel(), rtol=1e-6, atol=1e-9)


def test_clicking_grid_cell_selects_layer_and_head(driver, short_page):
    from selenium.webdriver.common.action_chains import ActionChains

    open_page(driver, short_page)
    fig = driver.find_element("id", "fig-heads")
    ActionChains(driver).move_to_element_with_offset(
        fig, *cell_offset(driver, fig, 2, 1)
    ).click().perform()  # head 2, layer 1
    state = driver.execute_script("return window.sinkhole.state")
    assert (state["layer"], state["head"]) == (1, 2)
    assert driver.find_element("id", "sel-layer").get_attribute("value") == "1"
    assert "layer 1, head 2" in driver.find_element("id", "cap-attn").text


def test_menus_and_token_clicks_select(driver, short_page):
    from selenium.webdriver.support.ui import Select

    open_page(driver, short_page)
    Select(driver.find_element("id", "sel-head")).select_by_value("3")
    assert driver.execute_script("return window.sinkhole.state.head") == 3
    driver.find_elements("css selector", "#strip .tok")[4].click()
    assert driver.execute_script("return window.sinkhole.state.token") == 4
    assert driver.find_element("id", "sel-token").get_attribute("value") == "4"
    assert driver.find_element("id", "cap-channels").text.startswith("#4 ")
    driver.find_element("css selector", ".card button.def").click()  # definitions: one click away
    assert driver.execute_script("return document.getElementById('defs').open") is True
    assert "spike score" in driver.find_element("id", "defs").text
    assert severe(driver) == []


def test_long_input_per_key_view(driver, long_page):
    open_page(driver, long_page)
    assert severe(driver) == []
    assert drawn(driver, "fig-attn") and drawn(driver, "fig-resid")
    note = driver.find_element("id", "maps-note").text
    assert note.startswith("Per-key view") and str(html.MAPS_MAX_LEN) in note
    driver.execute_script("window.sinkhole.selectHead(1, 3)")
    assert "line: head 3" in driver.find_element("id", "cap-attn").text


# --- layout: nothing covers data or other text, nothing is cut; a live run's page never asks for its Capture


def legends_checked(driver) -> int:
    return driver.execute_script(
        "return [...document.querySelectorAll('.js-plotly-plot g.legend rect.bg')]"
        ".filter((r) => r.getBoundingClientRect().width > 0).length"
    )


@pytest.fixture(scope="module")
def mechanism_page(tmp_path_factory):
    """What `sinkhole mechanism --output` writes, on a tiny model with a planted spike (live run); the
    example's tokens get chat-template-length texts, as real ones have."""
    from test_mechanism import planted, prompts

    from sinkhole.experiments.mechanism_study import MechanismConfig, add_page_detail, run_mechanism

    probe = ModelProbe(wrap(planted(), name="tiny"), top_k=4)
    result, _ = run_mechanism(probe, prompts(), chat=False, cfg=MechanismConfig(interventions=False))
    add_page_detail(result, probe, prompts()[0], False, maps_max_len=html.MAPS_MAX_LEN)
    for i, t in enumerate(result.example.tokens):
        t.text = f"<|im_start|>{i}"
    path = tmp_path_factory.mktemp("html") / "mechanism.html"
    html.write_html(result, path)
    return path


@pytest.fixture(scope="module")
def compare_page(tmp_path_factory):
    """`sinkhole compare --output` of two reports of one model: the heads' change as a heatmap."""
    from sinkhole.eval.comparison import compare_reports
    from sinkhole.render.compare_page import compare_html

    lm = wrap(tiny_llama(), name="tiny")
    a, b = (analyze(ModelProbe(lm, top_k=4).run(ids)) for ids in ([5, 17, 3, 42, 8], [9, 4, 77, 31, 2, 6]))
    path = tmp_path_factory.mktemp("html") / "compare.html"
    path.write_text(compare_html(compare_reports(a, b)), encoding="utf-8")
    return path


@pytest.mark.parametrize("width", [1400, 800])
@pytest.mark.parametrize("page", ["short_page", "long_page", "mechanism_page", "compare_page"])
def test_nothing_covers_data_or_text(driver, page, width, request):
    """At a wide and a narrow window: no mode bar over a legend or the data, no legend over the data, no two
    texts of a figure on each other, no text cut at a figure's edge (tests/browser_geometry.py)."""
    from browser_geometry import layout_problems

    driver.set_window_size(width, 1000)
    try:
        path = request.getfixturevalue(page)
        if page == "compare_page":
            driver.get(path.as_uri())
            from selenium.webdriver.support.ui import WebDriverWait

            WebDriverWait(driver, 60).until(lambda d: d.execute_script("return !!window.sinkholeCompareReady"))
        else:
            open_page(driver, path)
            assert legends_checked(driver) >= 2  # the checks below looked at real legends
        assert driver.execute_script("return document.querySelectorAll('.js-plotly-plot').length") >= 1
        assert layout_problems(driver) == []
    finally:
        driver.set_window_size(1400, 1000)


def test_layout_checks_find_what_they_look_for(driver, tmp_path):
    """The checks above report a mode bar over a legend and over the data, a legend over the data, a tick
    label on an axis title and a label cut at the figure's edge, on a figure built to have each."""
    import plotly.offline
    from browser_geometry import layout_problems

    page = tmp_path / "bad.html"
    page.write_text(
        "<!doctype html><html><body><div id='bad' style='width:500px;height:300px'></div>"
        f"<script>{plotly.offline.get_plotlyjs()}</script><script>"
        "Plotly.newPlot('bad', [{y: [1, 3, 2], name: 'a long legend entry'}, {y: [2, 1, 3], name: 'another one'}],"
        " {margin: {t: 4, b: 20}, legend: {x: 0.3, y: 1, xanchor: 'left', orientation: 'h'},"
        "  xaxis: {title: {text: 'x title', standoff: 0}, tickvals: [0, 1], ticktext: ['tick', 'a very long label'],"
        "  tickangle: -60}}, {displayModeBar: true});</script></body></html>",
        encoding="utf-8",
    )
    driver.get(page.as_uri())
    from selenium.webdriver.support.ui import WebDriverWait

    # Plotly.newPlot draws asynchronously: on a busy CPU the checks could run before there is anything
    # to check (a clean-clone CI run found nothing once), so wait for the mode bar and the legend.
    ready = "return !!(document.querySelector('#bad .modebar') && document.querySelector('#bad .legend'))"
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(ready))
    problems = "\n".join(layout_problems(driver))
    for what in ("mode bar", "over legend", "over plot area", "legend", "overlaps", "cut at the figure edge"):
        assert what in problems, (what, problems)


def test_one_colour_per_channel_across_the_page(driver, mechanism_page):
    """Every figure that draws a spike channel (the selected token's channels, the Mechanism's channels,
    the amplifier's bars and eigenvalues) draws it in the page's one colour for that channel."""
    import re

    open_page(driver, mechanism_page)
    seen = driver.execute_script(
        """
        const out = [];
        document.querySelectorAll('.js-plotly-plot').forEach((g) => (g._fullData || []).forEach((t) => {
          const m = /^(?:channel |S_)(\\d+)$/.exec(t.name || '');
          if (m) out.push([g.id, m[1], t.mode && t.mode.includes('lines') ? t.line.color : t.marker.color]);
          if (t.type === 'bar' && Array.isArray(t.marker.color))
            t.x.forEach((x, i) => {
              const c = /^ch (\\d+)/.exec(x);
              if (c) out.push([g.id, c[1], t.marker.color[i]]);
            });
        }));
        return out;"""
    )
    others = driver.execute_script(
        """
        document.querySelectorAll('details').forEach((d) => { d.open = true; d.dispatchEvent(new Event('toggle')); });
        const out = [];
        document.querySelectorAll('.js-plotly-plot').forEach((g) => (g._fullData || []).forEach((t) => {
          if (/^(channel |S_)\\d+$/.test(t.name || '') || (t.type === 'bar' && Array.isArray(t.x) &&
              t.x.some((x) => /^ch \\d+/.test(x)))) return;
          [t.line && t.line.color, t.marker && t.marker.color].flat().forEach((c) => {
            if (typeof c === 'string') out.push([g.id, t.name, c]);
          });
        }));
        return out;"""
    )
    colours, figures = {}, {}
    for fig, channel, colour in seen:
        colours.setdefault(channel, set()).add(colour)
        figures.setdefault(channel, set()).add(fig)
    spike = {str(c) for c in driver.execute_script("return window.sinkhole.data.mechanism.channels.channels")}
    assert spike and all(len(figures[c]) >= 3 for c in spike), figures  # channels, mech-channels, amplifier
    assert all(len(v) == 1 for v in colours.values()), colours
    palette = [colours[c].pop() for c in sorted(spike)]
    assert len(set(palette)) == len(palette) and all(re.match(r"#[0-9a-f]{6}$", c) for c in palette)
    # no other line or marker (tokens, norms, generic series in the opened "all numbers" tree) takes a
    # channel's colour
    assert len(others) >= 10 and [o for o in others if o[2].lower() in palette] == []


def test_spike_marker_sits_on_top_of_the_bars(driver, mechanism_page):
    """The tokens chart marks each spike token's score above its (often equally tall) attention bar:
    the marker is painted after the bars and is not clipped."""
    open_page(driver, mechanism_page)
    got = driver.execute_script(
        """
        const g = document.getElementById('fig-tokens'), svg = g.querySelector('svg.main-svg').getBoundingClientRect();
        const bars = [...g.querySelectorAll('.barlayer path')];
        return [...g.querySelectorAll('.scatterlayer path.point')].map((p) => {
          const r = p.getBoundingClientRect();
          return [
            r.width > 4 && r.top >= svg.top && r.bottom <= svg.bottom,
            bars.length > 0 && bars.every((b) => b.compareDocumentPosition(p) & Node.DOCUMENT_POSITION_FOLLOWING),
          ];
        });"""
    )
    spikes = driver.execute_script("return window.sinkhole.data.spikes.length")
    assert spikes >= 1 and got == [[True, True]] * spikes


def test_live_mechanism_page_has_its_capture_and_the_designed_section(driver, mechanism_page):
    open_page(driver, mechanism_page)
    assert severe(driver) == []
    text = driver.find_element("tag name", "body").text
    assert "Capture" not in text  # no "needs the run's Capture" / "unavailable" notice for a live run
    assert driver.execute_script("return !!window.sinkhole.data.alpha && !!window.sinkhole.data.channels")
    assert len(driver.find_elements("css selector", "#mech-story li")) >= 5
    for fig in ("mech-lifecycle", "mech-channels", "mech-amplifier", "mech-norm", "mech-keys", "mech-heads"):
        assert drawn(driver, fig), fig
    names = driver.execute_script(
        "return [...document.querySelectorAll('#mech-channels .legendtext')].map(e => e.textContent)"
    )
    chans = driver.execute_script("return window.sinkhole.data.mechanism.channels.channels")
    assert names == [f"channel {c}" for c in chans]  # real channel numbers, not [0]..[3]


@pytest.mark.parametrize("model_type", ["qwen3_next", "gpt_oss"])
def test_hybrid_and_learned_sink_pages_render(driver, tmp_path, model_type):
    """A hybrid's non-attention layers (null rows) and a learned-sink section draw without errors."""
    from sinkhole.models.tiny import tiny_model
    from sinkhole.probe.loading import LoadedModel
    from sinkhole.probe.support import IDS, IdTokenizer, quiet

    with quiet():
        lm = LoadedModel.wrap(tiny_model(model_type), IdTokenizer(), name=model_type)
    cap = ModelProbe(lm, maps_max_len=html.MAPS_MAX_LEN, top_k=4).run(IDS)
    path = tmp_path / f"{model_type}.html"
    html.write_html(analyze(cap), path)
    open_page(driver, path)
    assert severe(driver) == []
    for fig in ("fig-heads", "fig-attn", "fig-resid"):
        assert drawn(driver, fig), fig


@pytest.mark.parametrize("model_type", ["lfm2", "olmo2", "falcon_h1"])
def test_mechanism_page_with_sections_that_do_not_apply(driver, tmp_path, model_type):
    """lfm2 (hybrid, no gated FFN: no amplifier), olmo2 (no norm before its attention: no normalization)
    and falcon_h1 (blocks not split: the lifecycle has only layer outputs, and neither applies) draw the
    Mechanism section without errors, and say why in the story and in place of the figures that do not
    apply."""
    from test_mechanism import prompts

    from sinkhole.experiments.mechanism_study import MechanismConfig, run_mechanism
    from sinkhole.models.tiny import tiny_model
    from sinkhole.probe.loading import LoadedModel
    from sinkhole.probe.support import IdTokenizer, quiet

    with quiet():
        lm = LoadedModel.wrap(tiny_model(model_type), IdTokenizer(), name=model_type)
    cfg = MechanismConfig(interventions=False)
    result, _ = run_mechanism(ModelProbe(lm, top_k=4), prompts(3), chat=False, cfg=cfg)
    path = tmp_path / f"{model_type}-mechanism.html"
    html.write_html(result, path)
    open_page(driver, path)
    assert severe(driver) == []
    no_norm = model_type in ("olmo2", "falcon_h1")
    for fig in ("mech-channels", "mech-heads") + (() if no_norm else ("mech-norm",)):
        assert drawn(driver, fig), fig
    points = "return document.querySelectorAll('#mech-lifecycle .scatterlayer path.point').length"
    assert drawn(driver, "mech-lifecycle") or driver.execute_script(points) > 0
    story = driver.find_element("id", "mech-story").text
    assert ("Norm: not applicable" in story) == no_norm
    text = lambda fig: driver.find_element("id", fig).text
    assert text("mech-norm").startswith("Not applicable: no norm feeds") == no_norm
    assert text("mech-amplifier").startswith("Not applicable:") == (model_type != "olmo2")
