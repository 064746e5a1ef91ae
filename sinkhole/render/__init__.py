"""Every renderer: typed results (sinkhole.results) in, text / HTML / PNG out; nothing here runs a model.

The top layer: a renderer imports sinkhole.results (and io, and the other renderers) only; a number it
shows but the result lacks is computed by the producer and put into the result (tests/test_layout.py).

Renderers are named `<command>_<medium>`: `_text` prints to the terminal, `_figures` writes PNGs,
`_page` writes a self-contained HTML page.

    analyze_text.py     `analyze`'s terminal text (`pct`, shared by every text renderer)
    html.py             `analyze` / `mechanism`'s HTML report; html_data.py the data it embeds,
                        html_mechanism.py its Mechanism section
    compare_text.py     compare_page.py                   (compare)
    mechanism_text.py   profile_text.py   vocab_text.py   quant_text.py
    eval_text.py        eval_figures.py   eval_page.py    (summary.html)
    stream_text.py      stream_figures.py                 (--plot)
    recall_text.py                                        (stream --recall)
    kvbench_text.py     kvbench_page.py                   (kv-bench; the page's figures too)
    lab_text.py         lab_figures.py    lab_page.py     (lab.html)
    png.py              the one matplotlib set-up and PNG writer of every *_figures module
    static/             the pages' CSS and JS, as package files
"""
