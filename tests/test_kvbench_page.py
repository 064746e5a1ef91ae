"""kv-bench's page, read from its drawn figures: the accuracy plot's texts and points never cover each
other (several methods often sit at 100%, or at the same bytes), the NIAH maps are one per method on a
shared grid with numbers large enough to read, and the page lays the maps out below the plot. (The page
in a real browser: tests/test_kvbench_page_browser.py.)"""

import itertools
import json
from pathlib import Path

import pytest
from test_figure_layout import _overlap, _text_collisions

from sinkhole.render import kvbench_page as kp
from sinkhole.render.png import pyplot
from sinkhole.results.kvbench import Cell, CellSample, KVBenchResult

MAP_MIN_PX = 300  # CSS px: the narrowest a NIAH map of three lengths and five depths still reads
REAL = Path(__file__).resolve().parents[1] / "benchmarks/results/kvbench-default-smollm2-partial.json"


def real_result() -> KVBenchResult:
    return KVBenchResult.from_dict(json.loads(REAL.read_text()))


def _cell(task, length, method, score, kv_bytes, depths=(0.0, 0.5, 1.0)):
    samples = [CellSample(d if task == "niah" else None, 0, 5, score) for d in (depths if task == "niah" else [None])]
    return Cell(task, length, method, method, "acc", score, samples, 1, kv_bytes, 2 * kv_bytes, 0.5, 0, 1.0)


def crowded_cells() -> list[Cell]:
    """Every method at 100% on every task at one length and one byte count, and a second length where only
    passkey ran: the points all land on one spot unless the plot sets them apart."""
    cells = []
    for m in ("dense", "window", "sinks", "head_aware", "random:0", "random:1", "snapkv"):
        for task in ("passkey", "niah", "multikey"):
            cells.append(_cell(task, 1024, m, 1.0, 50 * 2**20))
        cells.append(_cell("passkey", 2048, m, 1.0, 100 * 2**20))
    return cells


def _marker_points(fig):
    """(display x, y, size in px) of every drawn marker of the figure's one axes."""
    fig.canvas.draw()
    ax, out = fig.axes[0], []
    for line in ax.get_lines():
        if line.get_marker() in (None, "None", "none", ""):
            continue
        size = line.get_markersize() * fig.dpi / 72
        out += [(*ax.transData.transform((x, y)), size) for x, y in zip(line.get_xdata(), line.get_ydata())]
    return out


@pytest.mark.parametrize("cells", [lambda: real_result().cells, crowded_cells], ids=["real", "crowded"])
def test_accuracy_plot_labels_and_points_do_not_cover_each_other(cells):
    fig = kp.accuracy_figure(kp.retrieval_points(cells()))
    try:
        assert _text_collisions(fig) == []
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        (ax,) = fig.axes
        # no text drawn on the data (per-point labels ran into each other where methods met)
        texts = [t for t in ax.texts if t.get_visible() and t.get_text()]
        for a, b in itertools.combinations(texts, 2):
            assert not _overlap(a.get_window_extent(r), b.get_window_extent(r)), (a.get_text(), b.get_text())
        # the legends name the methods and lengths beside the plot, never over it
        legends = [a for a in ax.get_children() if a.__class__.__name__ == "Legend"]
        assert len(legends) == 2
        for leg in legends:
            assert not _overlap(leg.get_window_extent(r), ax.get_window_extent(r)), leg.get_title().get_text()
        for a, b in itertools.combinations(legends, 2):
            assert not _overlap(a.get_window_extent(r), b.get_window_extent(r))
        # every point is seen: no marker's centre inside another's
        pts = _marker_points(fig)
        assert pts
        for (xa, ya, sa), (xb, yb, sb) in itertools.combinations(pts, 2):
            assert ((xa - xb) ** 2 + (ya - yb) ** 2) ** 0.5 >= 0.9 * max(sa, sb), ((xa, ya), (xb, yb))
    finally:
        pyplot().close(fig)


def test_dodge_moves_only_points_that_would_cover_each_other():
    P = kp.RetrievalPoint
    pts = {
        "a": [P(10.0, 1.0, 1024, ("passkey",)), P(100.0, 0.5, 2048, ("passkey",))],
        "b": [P(10.0, 1.0, 1024, ("passkey",)), P(100.0, 0.0, 2048, ("passkey",))],
        "c": [P(10.0, 0.5, 1024, ("passkey",))],
    }
    shift = kp.dodge(pts, 0.05)
    assert shift["a"][0] == pytest.approx(-0.025) and shift["b"][0] == pytest.approx(0.025)
    assert shift["a"][1] == shift["b"][1] == shift["c"][0] == 0.0


def test_partial_lengths_are_drawn_hollow():
    fig = kp.accuracy_figure(kp.retrieval_points(crowded_cells()))
    try:
        (ax,) = fig.axes
        faces = {line.get_markerfacecolor() for line in ax.get_lines() if len(line.get_xdata()) == 1}
        assert "white" in faces and len(faces) > 1
        names = [t.get_text() for leg in ax.get_children() if leg.__class__.__name__ == "Legend" for t in leg.texts]
        assert "not every\ntask counted" in names
    finally:
        pyplot().close(fig)


def test_a_task_dense_fails_counts_for_no_method():
    """Dense fails passkey at 1024 and kv-bench skipped it for sinks: every method's point there averages
    niah and multikey only; with every method's cell (--all-cells) passkey counts again."""
    from sinkhole.results.kvbench import Cell, CellSample

    def cell(task, method, score):
        return Cell(task, 1024, method, method, "exact", score, [CellSample(0.5, 0, 1, score)], 1, 10, 20, 0.5, 1, 1.0)

    cells = [cell("passkey", "dense", 0.0), cell("niah", "dense", 1.0), cell("multikey", "dense", 1.0)]
    cells += [cell("passkey", "snapkv", 0.0), cell("niah", "snapkv", 1.0), cell("multikey", "snapkv", 0.0)]
    cells += [cell("niah", "sinks", 0.0), cell("multikey", "sinks", 1.0)]
    pts = kp.retrieval_points(cells)
    assert {m: (p[0].accuracy, p[0].tasks) for m, p in pts.items()} == {
        "dense": (1.0, ("niah", "multikey")),
        "snapkv": (0.5, ("niah", "multikey")),
        "sinks": (0.5, ("niah", "multikey")),
    }
    pts = kp.retrieval_points([*cells, cell("passkey", "sinks", 0.0)])
    assert pts["dense"][0].tasks == ("passkey", "niah", "multikey") and pts["dense"][0].accuracy == 2 / 3


@pytest.mark.parametrize("cols", kp.NIAH_COLUMNS)
def test_niah_maps_share_one_grid_and_their_numbers_read(cols):
    cells = real_result().cells + [_cell("niah", 8192, "dense", 1.0, 9, depths=(0.0, 0.25))]
    grids = kp.niah_grids(cells)
    assert list(grids) == ["dense", "window", "sinks", "head_aware", "random", "snapkv"]
    assert len({(tuple(g.lengths), tuple(g.depths)) for g in grids.values()}) == 1
    assert grids["window"].acc[0][-1] is None  # window never ran 8192: its map says so in the same place
    fig = kp.niah_figure(grids, cols)
    try:
        assert _text_collisions(fig) == []
        r = fig.canvas.get_renderer()
        # a map is as wide in every layout: more columns make the figure wider, never the maps smaller
        w = kp._map_size(grids["dense"])[0] * kp.DPI
        assert fig.get_size_inches()[0] * kp.DPI == pytest.approx(w * cols)
        assert w >= MAP_MIN_PX
        for ax, g in zip(fig.axes, grids.values()):
            cell_w = ax.get_window_extent(r).width / len(g.lengths)
            assert len(ax.texts) == len(g.lengths) * len(g.depths)
            for t in ax.texts:
                assert t.get_fontsize() * kp.DPI / 72 >= 12  # CSS px where the page shows the maps as drawn
                assert t.get_window_extent(r).width < 0.9 * cell_w, t.get_text()
    finally:
        pyplot().close(fig)


def test_page_has_the_plot_then_the_maps_in_a_layout_for_each_window(tmp_path):
    import re

    kp.write_page(real_result(), tmp_path / "kv.html")
    page = (tmp_path / "kv.html").read_text()
    assert re.findall(r'<img alt="([^"]+)"', page) == ["accuracy vs KV bytes", "NIAH maps"]
    assert page.index("<picture>") > page.index('alt="accuracy vs KV bytes"')
    source = r'<source media="\(min-width: (\d+)px\)" width="(\d+)" height="\d+" data-cols="(\d)"'
    layouts = {int(c): (int(m), int(w)) for m, w, c in re.findall(source, page)}
    assert layouts.keys() == {3, 2}
    for cols, (window, width) in layouts.items():
        assert width <= window and width <= kp.PAGE_MAX and width / cols >= MAP_MIN_PX
    assert layouts[3][0] <= 1400 and layouts[2][0] <= 800  # a wide window shows three across, 800 px two
    assert "head_aware" in page and "<pre>" in page


def test_write_figures_for_docs(tmp_path):
    paths = kp.write_figures(real_result(), tmp_path)
    assert [p.name for p in paths] == ["niah.png", "accuracy.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
