"""kv-bench's page (from the real SmolLM2 results) in headless Chromium, at a wide and a narrow window:
every figure loads, nothing runs off the page or lies on another figure, and the NIAH maps sit below the
accuracy plot as a grid of small multiples that the window's width wraps (three across at 1400 px, two at
800), each map shown at (nearly) the size it was drawn for, so its cells' numbers read. Skipped, with the
reason, when selenium or chromium is missing (tests/test_html_browser.py)."""

import itertools

import pytest
from test_html_browser import driver  # noqa: F401  (the module's headless Chromium)
from test_kvbench_page import MAP_MIN_PX, real_result

from sinkhole.render import kvbench_page as kp

pytestmark = pytest.mark.browser

# Per figure: its box, its image's shown and drawn width (the chosen <source>'s or the <img>'s width
# attribute), how many maps across the chosen layout holds, and whether the image loaded from it.
GEOMETRY = """
const figs = [...document.querySelectorAll('figure')].map((f) => {
  const img = f.querySelector('img'), r = f.getBoundingClientRect();
  const src = [...f.querySelectorAll('source')].find((s) => matchMedia(s.media).matches);
  const chosen = src || img, url = src ? src.srcset.split(' ')[0] : img.src;
  return {alt: img.alt, niah: f.classList.contains('niah'), left: r.left, top: r.top, right: r.right,
          bottom: r.bottom, shown: img.getBoundingClientRect().width, drawn: +chosen.getAttribute('width'),
          cols: +(chosen.dataset.cols || 1), loaded: img.complete && img.naturalWidth > 0 && img.currentSrc === url};
});
return {figs: figs, scroll: document.documentElement.scrollWidth, inner: window.innerWidth};
"""


def _meet(a, b, tol=1.0) -> bool:
    return min(a["right"], b["right"]) - max(a["left"], b["left"]) > tol and (
        min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > tol
    )


@pytest.fixture(scope="module")
def kv_page(tmp_path_factory):
    path = tmp_path_factory.mktemp("kvpage") / "kv.html"
    kp.write_page(real_result(), path)
    return path


def kv_layout_problems(driver, per_row: int) -> list[str]:  # noqa: F811  (a parameter, not the fixture)
    """What a reader would see wrong on the open page; `per_row`: the fewest maps the window's width fits."""
    g = driver.execute_script(GEOMETRY)
    figs, bad = g["figs"], []
    if g["scroll"] > g["inner"]:
        bad.append(f"page {g['scroll']} px wide in a {g['inner']} px window")
    for f in figs:
        if not f["loaded"]:
            bad.append(f"{f['alt']}: image did not load")
        if f["right"] > g["inner"] + 1:
            bad.append(f"{f['alt']}: runs off the page at {f['right']:.0f} px")
    for a, b in itertools.combinations(figs, 2):
        if _meet(a, b):
            bad.append(f"{a['alt']} lies on {b['alt']}")
    plot = [f for f in figs if not f["niah"]]
    for m in (f for f in figs if f["niah"]):
        # the cells' numbers are drawn CELL_FONT points tall at the drawn size: shrunk, they stop reading
        scale = m["shown"] / m["drawn"]
        px, each = kp.CELL_FONT * kp.DPI / 72 * scale, m["shown"] / m["cols"]
        if each < MAP_MIN_PX or px < 11:
            bad.append(f"{m['alt']}: maps shown {each:.0f} px wide ({scale:.0%} of drawn), numbers {px:.1f} px")
        if m["cols"] < per_row:
            bad.append(f"{m['alt']}: {m['cols']} across, expected {per_row} or more")
        if plot and m["top"] < plot[0]["bottom"]:
            bad.append(f"{m['alt']}: beside the accuracy plot, not below it")
    return bad


@pytest.mark.parametrize("width, per_row", [(1400, 3), (800, 2)])
def test_kv_page_maps_below_the_plot_and_readable(driver, kv_page, width, per_row):  # noqa: F811
    driver.set_window_size(width, 1000)
    try:
        driver.get(kv_page.as_uri())
        assert driver.execute_script("return document.querySelectorAll('figure').length") == 2
        assert kv_layout_problems(driver, per_row) == []
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.set_window_size(1400, 1000)


def test_kv_page_checks_find_what_they_look_for(driver, kv_page, tmp_path):  # noqa: F811
    """The same checks on the page with its maps squeezed beside the plot report it."""
    squeezed = kv_page.read_text().replace(
        "</style>", "figure.accuracy{float:left;width:50%} figure.niah{display:flow-root}</style>", 1
    )
    assert squeezed != kv_page.read_text()
    path = tmp_path / "squeezed.html"
    path.write_text(squeezed)
    driver.get(path.as_uri())
    problems = "\n".join(kv_layout_problems(driver, 3))
    for what in ("numbers", "beside the accuracy plot"):
        assert what in problems, (what, problems)
