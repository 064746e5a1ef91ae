"""Typed results: what every command computes, as dataclasses that write and read their own JSON.

The bottom layer: these modules import nothing of sinkhole but `errors` and `io`, so every producer
(analysis/, experiments/, eval/, cache/, ...) and every renderer (render/) can import them.

    base.py        the one base, `Result`: `to_dict()` (field order kept, optional `opt` fields left
                   out when None), `from_dict`, `schema_text` (the key listings in docstrings and docs),
                   `write_json` (every command's strict-JSON writer), `NotApplicable`
    report.py      `analyze`'s report ("sinkhole.report/1": Report, its rows, ModelInfo, Detail for
                   renderers, MAPS_MAX_LEN)
    definitions.py the text that defines every number of a report (analysis.core's docstring, the
                   HTML page's Definitions)
    mechanism.py   `mechanism`'s typed result (the report's `mechanism` section)
    eval.py        `eval`'s rows (results.jsonl) and summary ("sinkhole.eval-summary/1")
    compare.py     `compare`'s two reports or two eval runs side by side ("sinkhole.compare/1")
    sink_profile.py  `profile`'s SinkProfile ("sinkhole.profile/1")
    stream.py      `stream`'s per-position nll of every cache method ("sinkhole.stream/1")
    stream_recall.py  `stream --recall`'s copy recall per cache method ("sinkhole.recall/1")
    quant.py       `quant`'s calibration statistics ("sinkhole.quant-stats/1") and W8A8 validation
    kvbench.py     `kv-bench`'s cells, settings and summary ("sinkhole.kvbench/1")
    lab.py         `lab`'s lab.json ("sinkhole.lab/2"): checkpoints, runs, settings, the lab
    lab_claims.py  the lab's paper claims, the verdict rule, and the summary it derives
"""
