"""The HTML pages' stylesheets and scripts, shipped as package files (pyproject's package-data).

    report.css     the analyze report's stylesheet (sinkhole.render.html); lab.html reuses it
    report.js      the analyze report's script: reads the JSON that `html_data.view` produced (element
                   #sinkhole-data) and draws every figure with plotly
    mechanism.css  the Mechanism section's additions (sinkhole.render.html_mechanism)
    mechanism.js   draws the Mechanism section; it runs inside report.js's start()
                   (window.sinkholeSections), with report.js's helpers in API.h
    eval.css       the eval summary page (sinkhole.render.eval_page)

Rules the scripts keep: token text reaches the DOM only through `textContent` / DOM properties, and
reaches plotly (which renders some HTML in labels and hover text) only through `esc()`.
`window.sinkhole` exposes the data, the selection and `select*` functions for tests.

Files rather than Python strings so an editor, a linter and a diff see plain JS and CSS; the pages
inline them, so a written page still opens offline.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def read(name: str) -> str:
    """The text of one of the files above, exactly as stored."""
    return files(__name__).joinpath(name).read_text(encoding="utf-8")
