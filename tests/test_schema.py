"""The report schema: the documented keys are the written keys, typed results round-trip through JSON,
and renderers need no Capture (tiny random models, no download)."""

import json
import re
from dataclasses import fields

import pytest
from conftest import tiny_llama, wrap

from sinkhole.analysis.core import analyze
from sinkhole.probe.probe import ModelProbe
from sinkhole.results import mechanism as mechanism_schema
from sinkhole.results import report as schema
from sinkhole.results.mechanism import MechanismResult, key_paths, mechanism_doc
from sinkhole.results.report import Report, SpikeToken, documented_keys, schema_doc

IDS = [5, 17, 3, 42, 8, 8, 91, 23, 11, 60, 2, 7]
LOW = {"threshold": 1.2, "epsilon": 0.05, "min_sink_rate": 0.3}  # a tiny random model has spikes and sinks


def parse_keys(text: str, prefix: str = "") -> set[str]:
    """'a{b, c[{d}], e[T]}, f' -> {'a', 'a.b', 'a.c', 'a.c[].d', 'a.e', 'f'} (the docstring's notation)."""
    out, i = set(), 0

    def block(i: int, prefix: str) -> int:
        while i < len(text) and text[i] != "}":
            m = re.compile(r"\s*,?\s*(\w+)").match(text, i)
            name, i = prefix + m.group(1), m.end()
            out.add(name)
            while i < len(text) and text[i] == "[":
                if text[i + 1] == "{":
                    i = block(i + 2, name + "[].") + 2  # past '}]'
                else:
                    i = text.index("]", i) + 1  # a shape: [T], [L][H]
            if i < len(text) and text[i] == "{":
                i = block(i + 1, name + ".") + 1
            i = re.compile(r"\s*,?\s*").match(text, i).end()
        return i

    while i < len(text):
        i = block(i, prefix) + 1
    return out


def written_keys(x, prefix: str = "") -> set[str]:
    """Key paths of a JSON value; list items that are objects add 'key[].sub'."""
    out = set()
    if isinstance(x, dict):
        for k, v in x.items():
            out.add(prefix + k)
            out |= written_keys(v, prefix + k + ".")
    elif isinstance(x, list):
        for v in x:
            if isinstance(v, dict):
                out |= written_keys(v, prefix[:-1] + "[].")
    return out


def documented() -> tuple[set[str], set[str]]:
    always, optional = documented_keys()
    return parse_keys(", ".join(always)), parse_keys(", ".join(optional))


def report_of(model, **kw) -> Report:
    return analyze(ModelProbe(wrap(model), top_k=4).run(IDS), **kw)


def test_docstring_is_generated_from_the_dataclasses():
    flat = " ".join(schema.__doc__.split())
    assert " ".join(schema_doc().split()) in flat
    always, optional = documented()
    assert {"spikes.tokens[].step_up_layers", "sinks.top.n_heads", "model.attention_path"} <= always
    assert {"heads.mass_on_top_sink", "learned_sinks.top_token_sink.alpha"} <= optional


def test_parse_keys_reads_the_notation():
    assert parse_keys("a{b, c[{d, e[T]}], f[L][H]}, g") == {"a", "a.b", "a.c", "a.c[].d", "a.c[].e", "a.f", "g"}


def test_every_written_key_is_documented_and_every_documented_key_is_written_or_optional():
    from sinkhole.models.tiny import tiny_model
    from sinkhole.probe.loading import LoadedModel
    from sinkhole.probe.support import IdTokenizer, quiet

    always, optional = documented()
    plain = json.loads(report_of(tiny_llama(), **LOW).to_json())
    assert plain["spikes"]["tokens"] and plain["sinks"]["tokens"]  # the lists' rows are looked at
    with quiet():
        lm = LoadedModel.wrap(tiny_model("gpt_oss"), IdTokenizer(), name="gpt_oss")
    learned = json.loads(analyze(ModelProbe(lm, top_k=4).run(IDS)).to_json())  # has learned_sinks
    for d in (plain, learned):
        assert written_keys(d) - always - optional == set(), "written but not documented"
        assert {k for k in always if "." not in k} <= set(d)
    assert always - written_keys(plain) == set(), "documented as always present but not written"
    assert optional - written_keys(plain) - written_keys(learned) == set(), "documented optional key never written"


def test_readme_json_section_names_every_documented_key():
    readme = open("README.md", encoding="utf-8").read()
    section = readme.split("### JSON report (", 1)[1].split("\n## ", 1)[0]
    always, optional = documented()
    names = {k.replace("[]", "").split(".")[-1] for k in always | optional}
    assert {n for n in names if not re.search(rf"\b{n}\b", section)} == set()


def test_report_round_trips_through_json():
    r = report_of(tiny_llama(), **LOW)
    d = r.to_dict()
    back = Report.from_dict(json.loads(json.dumps(d)))
    assert back.to_dict() == d and back.detail is None and r.detail is not None
    assert isinstance(back.spikes.tokens[0], SpikeToken) and back.sinks.top == r.sinks.top
    assert back == r  # every section typed again (detail is not compared)
    d["custom"] = {"v": 1}
    assert Report.from_dict(d).extra == {"custom": {"v": 1}} and Report.from_dict(d).to_dict() == d


def test_compare_refuses_an_incomplete_report_in_one_line():
    from sinkhole.errors import SinkholeError
    from sinkhole.eval.comparison import Loaded, compare

    d = {k: v for k, v in report_of(tiny_llama()).to_dict().items() if k != "kv"}
    with pytest.raises(SinkholeError, match="not a complete sinkhole.report/1 report"):
        compare(Loaded("a.json", d["schema"], d), Loaded("b.json", d["schema"], d))


def test_results_are_read_by_attribute_not_as_dicts():
    r = report_of(tiny_llama(), **LOW)
    assert r.kv.n_slots == len(IDS) and r.learned_sinks is None and r.to_dict()["schema"] == "sinkhole.report/1"
    for x in (r, r.kv, r.spikes.tokens[0]):
        with pytest.raises(TypeError):
            x["position"]
        assert not hasattr(x, "get") and not hasattr(x, "keys")


# ---------- the mechanism result (sinkhole.results.mechanism) ----------


class CharTokenizer:
    """IdTokenizer plus a text encoder, so the interventions can run on a tiny model."""

    pad_token_id, eos_token, chat_template = 0, None, None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [12 + ord(c) % 80 for c in text]}

    def decode(self, ids):
        return "".join(f"<{i}>" for i in ids)


def mechanism_of(lm, prompts, interventions=False) -> MechanismResult:
    from sinkhole.experiments.mechanism_study import MechanismConfig, run_mechanism

    cfg = MechanismConfig(interventions=interventions, text="the sink and the spike " * 4, text_tokens=48)
    return run_mechanism(ModelProbe(lm, top_k=4), prompts, chat=False, cfg=cfg)[0]


@pytest.fixture(scope="module")
def mechanism_runs():
    """{name: (typed result, its JSON read back)}: the planted model of tests/test_mechanism.py with every
    optional section (interventions, vocab sweep), a hybrid (lfm2: sink_keys.layers, no gated FFN) and a
    model without a norm before its attention (olmo2), and a hybrid whose blocks discovery cannot split
    (falcon_h1: no attention or FFN contributions measured)."""
    from test_mechanism import planted, prompts

    from sinkhole.experiments.vocab_sweep import vocab_sweep
    from sinkhole.models.tiny import tiny_model
    from sinkhole.probe.loading import LoadedModel
    from sinkhole.probe.support import IdTokenizer, quiet

    lm = LoadedModel.wrap(planted(), CharTokenizer(), name="planted")
    full = mechanism_of(lm, prompts(), interventions=True)
    full.vocab_sweep = vocab_sweep(lm, prompts(1, T=20)[0][1:], threshold=10.0, batch_size=32)
    runs = {"planted": full}
    for mt in ("lfm2", "olmo2", "falcon_h1"):
        with quiet():
            tiny = LoadedModel.wrap(tiny_model(mt), IdTokenizer(), name=mt)
        runs[mt] = mechanism_of(tiny, prompts(3))
    return {k: (r, json.loads(json.dumps(r.to_dict(), allow_nan=False))) for k, r in runs.items()}


def mechanism_keys(x, maps: set[str], prefix: str = "") -> set[str]:
    """Key paths under `mechanism` ('a.b', 'a[].b' in list items), not below the free-key objects `maps`."""
    out = set()
    if isinstance(x, dict):
        for k, v in x.items():
            out.add(prefix + k)
            if prefix + k not in maps:
                out |= mechanism_keys(v, maps, prefix + k + ".")
    elif isinstance(x, list):
        for v in x:
            if isinstance(v, dict):
                out |= mechanism_keys(v, maps, prefix[:-1] + "[].")
    return out


def test_mechanism_docstring_and_docs_are_generated_from_the_dataclasses():
    listing = " ".join(mechanism_doc().split())
    assert listing in " ".join(mechanism_schema.__doc__.split())
    assert listing in " ".join(open("docs/mechanism.md", encoding="utf-8").read().split())
    paths = key_paths()
    assert paths["lifecycle.tokens[].rise"] == "key" and paths["lifecycle.tokens[].trace.blocks"] == "optional key"
    assert paths["activation.reason"] == "optional key" and paths["lifecycle.rise_counts"] == "map"


def test_every_written_mechanism_key_is_documented_and_every_documented_key_is_written_or_optional(
    mechanism_runs,
):
    paths = key_paths()
    maps = {p for p, kind in paths.items() if kind.endswith("map")}
    always = {p for p, kind in paths.items() if not kind.startswith("optional")}
    written = {k: mechanism_keys(d["mechanism"], maps) for k, (_, d) in mechanism_runs.items()}
    for name, keys in written.items():
        assert keys - set(paths) == set(), f"{name}: written but not documented"
    assert always - written["planted"] == set(), "documented as always present but not written"
    assert set(paths) - set().union(*written.values()) == set(), "documented key never written"
    planted = mechanism_runs["planted"][1]["mechanism"]
    assert "trace" in planted["lifecycle"]["tokens"][0] and "trace" not in planted["lifecycle"]["tokens"][-1]
    assert mechanism_runs["lfm2"][1]["mechanism"]["activation"] == {
        "applicable": False,
        "reason": mechanism_runs["lfm2"][0].activation.reason,
    }


def test_mechanism_json_keeps_its_layout_and_round_trips(mechanism_runs):
    from sinkhole.results.mechanism import Amplifier, LifecycleToken, NotApplicable, PerVariant

    for res, d in mechanism_runs.values():
        assert list(d)[:-1] == list(res.example.to_dict()) and res.model == res.example.model
        back = MechanismResult.from_dict(d)
        assert back.to_dict() == d and back.sections() == res.sections()
        assert type(back.activation) is type(res.activation) and type(back.normalization) is type(res.normalization)
        assert all(type(a) is type(b) for a, b in zip(back.lifecycle.tokens, res.lifecycle.tokens))
    res, d = mechanism_runs["planted"]
    order = ["config", "targets", "summary", "lifecycle", "channels", "activation", "amplifier", "normalization"]
    assert list(d["mechanism"]) == [*order, "sink_keys", "interventions", "vocab_sweep"]
    assert list(mechanism_runs["olmo2"][1]["mechanism"]) == [*order, "sink_keys"]
    assert isinstance(res.lifecycle.tokens[0], LifecycleToken) and isinstance(res.amplifier, Amplifier)
    assert isinstance(res.interventions.perplexity, PerVariant)
    assert isinstance(mechanism_runs["olmo2"][0].normalization, NotApplicable)
    tok = res.lifecycle.tokens[0]  # the JSON's flat row: who it is, then its block lifecycle
    assert list(d["mechanism"]["lifecycle"]["tokens"][0])[:8] == [
        "prompt",
        "position",
        "token_id",
        "text",
        "score",
        "core_step_up_layers",
        "core_step_down_layers",
        "step_up_blocks",
    ]
    assert tok.to_dict()["rise"] == tok.rise
    lfm2 = mechanism_runs["lfm2"][1]["mechanism"]["sink_keys"]
    assert list(lfm2)[-1] == "layers" and len(lfm2["per_layer_kv_head"]["sink_pr"]) == len(lfm2["layers"])


def test_mechanism_renderers_read_the_typed_sections(mechanism_runs):
    """The terminal text and the page draw a typed result and the same result read back from JSON alike,
    for every form of the sections (not applicable ones included)."""
    from sinkhole.render import html
    from sinkhole.render.html_data import view
    from sinkhole.render.mechanism_text import render_mechanism

    for name, (res, d) in mechanism_runs.items():
        back = MechanismResult.from_dict(d)
        assert render_mechanism(res) == render_mechanism(back)
        live, read = view(res.example, res), view(Report.from_dict(d), None)
        assert live["mechanism"] == read["mechanism"] and live["sections"] == read["sections"], name
        assert 'id="mech-story"' in html.render_html(res)
    text = render_mechanism(mechanism_runs["lfm2"][0])
    assert "Activation / amplifier  not applicable" in text and "Amplifier ch" not in text
    assert "Normalization  not applicable" in render_mechanism(mechanism_runs["olmo2"][0])
    story = view(mechanism_runs["olmo2"][0].example, mechanism_runs["olmo2"][0])["mechanism"]["story"]
    assert any(s.startswith("Norm: not applicable") for s in story)


def test_renderers_read_the_report_only():
    """The page and an eval row come from the report (its detail), with no Capture in sight."""
    from sinkhole.eval.runner import prompt_row
    from sinkhole.eval.suite import SuiteItem
    from sinkhole.render import html

    cap = ModelProbe(wrap(tiny_llama()), maps_max_len=html.MAPS_MAX_LEN, top_k=4).run(IDS)
    r = analyze(cap, threshold=1.2)
    page = html.render_html(r)
    assert '"maps":{"shape"' in page and '"alpha":{"shape"' in page
    row = prompt_row(SuiteItem(index=0, category="x", prompt="p"), r)
    s = r.spikes.tokens[0]
    at = dict(zip(cap.resid_top_channels[s.layer, s.position], cap.resid_top_values[s.layer, s.position]))
    assert row.spikes[0].channel_values == [float(at[c]) for c in s.channels]
    assert row.n_tokens == len(IDS) and row.tokens == cap.tokens


# ---------- eval rows (sinkhole.results.eval): the same checks for results.jsonl ----------


def eval_row_keys() -> set[str]:
    from sinkhole.results.eval import row_keys

    return parse_keys(row_keys())


def test_eval_row_docstring_and_docs_are_generated_from_the_dataclass():
    from sinkhole.results import eval as rows

    flat = lambda text: " ".join(text.split())  # noqa: E731
    assert flat(rows.row_doc()) in flat(rows.__doc__)
    assert flat(rows.row_keys()) in flat(open("docs/eval.md", encoding="utf-8").read())
    assert {"spikes[].channel_values", "top_sink.attn_mass", "sinks[].sink_rate", "sink_heads", "tokens"} <= (
        eval_row_keys()
    )


def test_every_eval_row_key_written_is_documented_and_the_row_reads_back(tmp_path):
    """A row with spikes and sinks, written by ResultsStore: its keys are the documented ones, all of
    them; read back it is the typed row again; CSV and summary read typed rows as they read dicts."""
    from sinkhole.eval.aggregate import summarize
    from sinkhole.eval.export import rows_csv
    from sinkhole.eval.runner import ResultsStore, prompt_row
    from sinkhole.eval.suite import SuiteItem
    from sinkhole.results.eval import EvalRow, EvalSink, EvalSpike

    row = prompt_row(SuiteItem(index=0, category="x", prompt="p"), report_of(tiny_llama(), **LOW))
    assert isinstance(row, EvalRow) and row.spikes and row.sinks  # the lists' entries are looked at
    ResultsStore(tmp_path).append([row])
    line = (tmp_path / "results.jsonl").read_text(encoding="utf-8")
    written = json.loads(line)
    assert written_keys(written) == eval_row_keys(), "written and documented keys differ"
    assert (
        list(written) == [f.name for f in fields(row)] and line == json.dumps(row.to_dict(), ensure_ascii=False) + "\n"
    )
    back = ResultsStore(tmp_path).read_rows()[0]
    assert back == row and isinstance(back.spikes[0], EvalSpike) and isinstance(back.top_sink, EvalSink)
    assert back.to_dict() == written and back.to_dict()["sink_mass"] == back.sink_mass
    assert rows_csv([row]) == rows_csv([written]) and summarize([row]) == summarize([written])


def test_the_one_base_writes_none_fields_but_leaves_out_unset_optional_ones():
    """Rows write every field (None as null); `opt` fields are left out when None; `from_dict` ignores
    keys that are not fields; the schema text marks optional fields with '?'."""
    from dataclasses import dataclass

    from sinkhole.results.base import Result, opt, schema_text, shape

    @dataclass
    class Inner(Result):
        x: list[int] = shape("[C]")

    @dataclass
    class Row(Result):
        a: int | None
        inner: list[Inner]
        b: Inner | None = opt("when computed")

    assert Row(None, []).to_dict() == {"a": None, "inner": []}
    row = Row(1, [Inner([2])], Inner([3]))
    assert row.to_dict() == {"a": 1, "inner": [{"x": [2]}], "b": {"x": [3]}}
    assert Row.from_dict({**row.to_dict(), "extra": 0}) == row
    assert schema_text(Row) == "{a, inner[{x[C]}], b?{x[C]}}"
