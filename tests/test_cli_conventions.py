"""The CLI's shared conventions that a new user meets first: output flags (`--output` page, `--json`
data, `--out` directory, old spellings as hidden aliases with a notice; docs/cli.md, "Output flags"),
short summaries instead of raw JSON on the terminal, and progress for every long pass."""

from __future__ import annotations

import json

import pytest
from faults_common import save_tiny

from sinkhole.cli.main import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama with a word-level tokenizer and a context long enough for the streaming scores'
    1024-token copy prompts."""
    return save_tiny(tmp_path_factory.mktemp("tiny"), max_position_embeddings=2048)


@pytest.fixture
def suite(tmp_path):
    p = tmp_path / "suite.txt"
    p.write_text("the one of you\nis in it that\nwas for on are\n", encoding="utf-8")
    return p


def test_profile_shows_progress_per_stream(tiny, suite, tmp_path, capsys, monkeypatch):
    import sinkhole.progress as prog

    # every update printed (a log file's whole lines, without the 2-second quiet start)
    monkeypatch.setattr(prog, "progress", lambda **kw: prog.LineProgress(**{**kw, "quiet_for": 0.0, "every": 0.0}))
    argv = ["profile", "--model", str(tiny), "--prompts", str(suite), "--stream-prompts", "3"]
    assert main(argv + ["--json", str(tmp_path / "p.json")]) == 0
    err = capsys.readouterr().err.splitlines()
    said = next(i for i, line in enumerate(err) if line.startswith("streaming scores: 3 copy prompts"))
    assert err[said - 1].startswith("profile: 3/3 prompt (100%)")  # the suite's bar finished first
    after = [line for line in err[said:] if line.startswith("streaming scores: ")]
    assert [line.split()[2] for line in after[1:]] == ["1/3", "2/3", "3/3"]  # one line per stream here
    assert json.loads((tmp_path / "p.json").read_text())["streaming"]["prompts"]["count"] == 3


# --- output flags (docs/cli.md, "Output flags") ---------------------------------------------------

OLD_SPELLINGS = {  # command -> (old flag, its dest, the new flag)
    "profile": [("--out", "json", "--json"), ("-o", "json", "--json")],
    "quant": [("--out", "hints", "--hints")],
    "mask": [("--out", "out", "--npz")],
}


def _visible(sub) -> dict[str, object]:
    """option string -> action, for the options --help shows."""
    import argparse

    return {s: a for a in sub._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def test_every_subcommand_follows_the_output_convention():
    from pathlib import Path

    from sinkhole.cli.main import SUBCOMMANDS, build_parser

    parser = build_parser()
    table = Path(__file__).resolve().parent.parent.joinpath("docs", "cli.md").read_text(encoding="utf-8")
    table = table.split("## Output flags", 1)[1].split("\n## ", 1)[0]
    for name in SUBCOMMANDS:
        opts = _visible(parser.subcommands[name])
        assert f"| `{name}` |" in table, f"docs/cli.md's Output flags table lacks {name}"
        if "-o" in opts:
            assert opts["-o"] is opts.get("--output"), f"{name}: -o is not --output"
        if "--output" in opts:
            assert "HTML" in opts["--output"].help or "html" in opts["--output"].help.lower(), name
        if "--out" in opts:
            assert "directory" in opts["--out"].help, f"{name}: --out is not a directory"
        if "--json" in opts:
            assert opts["--json"].dest == "json", name
    # the convention parses: a page, data, a directory
    args = parser.parse_args(["analyze", "-o", "r.html", "--json", "r.json"])
    assert (str(args.output), str(args.json)) == ("r.html", "r.json")
    assert str(parser.parse_args(["profile", "--json", "p.json"]).json) == "p.json"
    assert str(parser.parse_args(["eval", "--out", "runs/x"]).out) == "runs/x"


@pytest.mark.parametrize("command,old,dest,new", [(c, *x) for c, xs in OLD_SPELLINGS.items() for x in xs])
def test_old_spellings_still_work_with_one_notice(command, old, dest, new, capsys):
    from sinkhole.cli.main import build_parser

    parser = build_parser()
    required = ["--texts", "t.txt"] if command == "mask" else []
    args = parser.parse_args([command, *required, old, "x.file"])
    assert str(getattr(args, dest)) == "x.file"  # what the new flag sets
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sinkhole: note: {command} {old} is now {new}")
    assert old not in _visible(parser.subcommands[command]) and new in _visible(parser.subcommands[command])


def test_old_spelling_end_to_end(tiny, suite, tmp_path, capsys):
    argv = ["profile", "--model", str(tiny), "--prompts", str(suite), "--no-streaming"]
    assert main(argv + ["--out", str(tmp_path / "old.json")]) == 0
    out, err = capsys.readouterr()
    assert "sinkhole: note: profile --out is now --json" in err
    assert "from 3 prompts (" in out and "no chat template)" in out  # the setting in words, not "chat False"
    assert json.loads((tmp_path / "old.json").read_text())["schema"] == "sinkhole.profile/1"
    assert main(argv + ["--json", str(tmp_path / "new.json")]) == 0
    assert "note:" not in capsys.readouterr().err
    assert main(["mask", "--model", str(tiny), "--texts", str(suite), "--out", str(tmp_path / "m.npz")]) == 0
    assert "mask --out is now --npz" in capsys.readouterr().err and (tmp_path / "m.npz").is_file()
    assert main(["mask", "--model", str(tiny), "--texts", str(suite)]) == 2
    assert "--npz MASK.npz" in capsys.readouterr().err


def test_an_unknown_option_gets_the_subcommands_usage(capsys):
    assert main(["profile", "--bogus", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: sinkhole profile")
    assert err.splitlines()[-1] == "sinkhole profile: error: unrecognized arguments: --bogus 1"


def test_quant_hints_file_gets_a_summary_not_json(tiny, tmp_path, capsys):
    from faults_common import WORDS

    text = tmp_path / "calib.txt"
    text.write_text(" ".join(WORDS * 40), encoding="utf-8")
    out = tmp_path / "bnb.json"
    argv = ["quant", "--model", str(tiny), "--backend", "bitsandbytes", "--calib", str(text)]
    assert main(argv + ["--calib-seqs", "2", "--calib-len", "16", "--hints", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = printed.split("bitsandbytes config for ")[1]
    assert str(out) in summary.splitlines()[0] and "{" not in summary  # the path, and no JSON
    assert json.loads(out.read_text())["load_in_8bit"] is True
