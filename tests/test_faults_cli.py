"""The fault matrix over every subcommand: bad numbers, bad input files, bad output paths, and
model-side faults. Each case must exit with code 2, print one `sinkhole: error:` line and no
traceback, and leave every input file byte for byte as it was. Cases run in-process through
`sinkhole.cli.main.main`; validation happens before any model is loaded, so most take
milliseconds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults_common import assert_clean_error, make_inputs, save_tiny, tree_hash

from sinkhole.cli.main import main

BASE = {
    "analyze": ["analyze", "--model", "TINY", "--prompt", "the one of you"],
    "mechanism": ["mechanism", "--model", "TINY", "--prompts", "SUITE", "--no-interventions"],
    "vocab-sweep": ["vocab-sweep", "--model", "TINY"],
    "eval": ["eval", "--model", "TINY", "--prompts", "SUITE", "--out", "OUTDIR", "--no-figures"],
    "profile": ["profile", "--model", "TINY", "--prompts", "SUITE"],
    "stream": ["stream", "--model", "TINY", "--text", "TEXT", "--tokens", "64", "--cache", "16", "--no-profile"],
    "quant": ["quant", "--model", "TINY", "--backend", "bitsandbytes", "--calib", "TEXT"],
    "lab": ["lab", "--out", "OUTDIR", "--quick", "--no-figures"],
    "compare": ["compare", "PROMPT", "PROMPT"],
    "models": ["models"],
}
ANALYSIS = ("analyze", "mechanism", "eval", "profile")  # commands with --threshold / --epsilon
SINK_RATE = ("analyze", "eval", "profile")

BAD_THRESHOLDS = ["nan", "inf", "-inf", "-3", "0", "0.5"]
BAD_SHARES = ["2", "-0.1", "nan", "0", "inf", "1.5"]


def _numbers():
    for cmd in ANALYSIS:
        for v in BAD_THRESHOLDS:
            yield cmd, ["--threshold", v], "--threshold"
        for v in BAD_SHARES[:5]:
            yield cmd, ["--epsilon", v], "--epsilon"
    for cmd in SINK_RATE:
        for v in ("1.5", "0", "nan", "-1"):
            yield cmd, ["--min-sink-rate", v], "--min-sink-rate"
    for v in ("-1", "0", "nan"):
        yield "vocab-sweep", ["--threshold", v], "--threshold"
    yield from [
        ("vocab-sweep", ["--list", "-3"], "--list"),
        ("vocab-sweep", ["--sample", "0"], "--sample"),
        ("vocab-sweep", ["--batch-size", "0"], "--batch-size"),
        ("vocab-sweep", ["--batch-size", "-5"], "--batch-size"),
        ("eval", ["--threads", "0"], "--threads"),
        ("eval", ["--threads", "-1"], "--threads"),
        ("eval", ["--limit", "0"], "--limit"),
        ("eval", ["--limit", "-5"], "--limit"),
        ("eval", ["--batch-tokens", "0"], "--batch-tokens"),
        ("eval", ["--max-batch", "0"], "--max-batch"),
        ("eval", ["--max-batch", "-1"], "--max-batch"),
        ("profile", ["--limit", "0"], "--limit"),
        ("stream", ["--tokens", "1"], "--tokens"),
        ("stream", ["--cache", "1"], "--cache"),
        ("stream", ["--tokens", "10", "--cache", "64"], "nothing is ever evicted"),
        ("stream", ["--sinks", "-1"], "--sinks"),
        ("stream", ["--sinks", "15"], "--sinks"),
        ("stream", ["--samples", "-1"], "--samples"),
        ("mechanism", ["--text-tokens", "0"], "--text-tokens"),
        ("mechanism", ["--text-tokens", "15"], "--text-tokens"),
        ("quant", ["--calib-seqs", "0"], "--calib-seqs"),
        ("quant", ["--calib-len", "1"], "--calib-len"),
        ("quant", ["--validate", "--heldout-seqs", "0"], "--heldout-seqs"),
        ("quant", ["--validate", "--heldout-len", "1"], "--heldout-len"),
        ("quant", ["--alpha", "2"], "--alpha"),
        ("quant", ["--alpha", "nan"], "--alpha"),
        ("quant", ["--alpha", "abc"], "--alpha"),
        ("stream", ["--recall", "--budget", "0"], "--budget"),
        ("stream", ["--recall", "--budget", "1.5"], "--budget"),
        ("stream", ["--recall", "--budget", "nan"], "--budget"),
        ("stream", ["--recall", "--window", "0"], "--window"),
        ("stream", ["--recall", "--seeds", "0"], "--seeds"),
        ("profile", ["--stream-window", "0"], "--stream-window"),
        ("profile", ["--stream-prompts", "0"], "--stream-prompts"),
        ("profile", ["--stream-sinks", "-1"], "--stream-sinks"),
        ("lab", ["--steps", "0"], "--steps"),
        ("lab", ["--seed", "-1"], "--seed"),
        ("lab", ["--checkpoints", "0"], "--checkpoints"),
        ("lab", ["--layers", "0"], "--layers"),
        ("lab", ["--d-model", "1"], "--d-model"),
        ("lab", ["--threads", "0"], "--threads"),
        ("analyze", ["--threads", "0"], "--threads"),
        ("stream", ["--threads", "-2"], "--threads"),
        # argparse's own refusals: exit 2 with usage, no traceback
        ("analyze", ["--threshold", "abc"], "invalid float"),
        ("stream", ["--tokens", "2.5"], "invalid int"),
        ("eval", ["--threads", "many"], "invalid int"),
    ]


OUTPUT_FLAGS = {
    "analyze": ["--output", "--json"],
    "mechanism": ["--output", "--json"],
    "vocab-sweep": ["--json"],
    "profile": ["--json"],
    "stream": ["--json", "--plot"],
    "quant": ["--hints", "--stats-json"],
    "compare": ["--output", "--json"],
    "models": ["--json"],
    "eval": ["--csv"],
}
BAD_OUTPUTS = [
    ("DIR", "is a directory"),
    ("PROC", "/proc"),
    ("RO_OUT", "read-only"),
    ("ROFILE", "read-only"),
    ("UNDERFILE", "is a file, not a directory"),
    ("PROMPT", "destroy the input"),
]


# an input of each command (extra arguments that make it one, and the input's placeholder)
INPUT_OF = {
    "analyze": (["--prompt", None, "--prompt-file", "PROMPT"], "PROMPT"),
    "mechanism": ([], "SUITE"),
    "vocab-sweep": ([], "TINY_CONFIG"),
    "profile": ([], "SUITE"),
    "stream": ([], "TEXT"),
    "quant": ([], "TEXT"),
    "compare": ([], "PROMPT"),
    "eval": ([], "SUITE"),
}


def _outputs():
    for cmd, flags in OUTPUT_FLAGS.items():
        for flag in flags:
            for path, message in BAD_OUTPUTS:
                if path == "PROMPT":  # the same file as an input of this very command
                    if cmd not in INPUT_OF:  # a command that reads no file
                        continue
                    extra, path = INPUT_OF[cmd]
                    yield cmd, [*extra, flag, path], message
                else:
                    yield cmd, [flag, path], message
    yield "eval", ["--out", "PROMPT"], "is a file"  # the base's --out is replaced
    yield "eval", ["--out", "PROCDIR"], "/proc"
    yield "lab", ["--out", "PROMPT"], "is a file"
    yield "lab", ["--out", "PROCDIR"], "/proc"
    yield "lab", ["--out", "RODIR"], "read-only"
    yield "eval", ["--out", "UNDERFILE"], "is a file"
    yield "eval", ["--out", "RODIR"], "read-only"
    yield "eval", ["--out", "SUITE"], "also an input"
    yield "eval", ["--prompts", "OUTDIR_RESULTS"], "eval writes into --out"
    yield "analyze", ["--json", "SAME", "--output", "SAME"], "same file"
    yield "stream", ["--json", "SAME", "--plot", "SAME"], "same file"
    yield "analyze", ["--output", "-"], "cannot be '-'"
    yield "quant", ["--hints", "-"], "cannot be '-'"
    yield "quant", ["--json", "-"], "stdout"


INPUT_FAULTS = [
    ("analyze", ["--prompt", None, "--prompt-file", "MISSING"], "prompt file not found"),
    ("analyze", ["--prompt", None, "--prompt-file", "DIR"], "is a directory"),
    ("analyze", ["--prompt", None, "--prompt-file", "EMPTY"], "empty prompt"),
    ("analyze", ["--prompt", None, "--prompt-file", "BINARY"], "cannot read prompt file"),
    ("eval", ["--prompts", "MISSING"], "not found"),
    ("eval", ["--prompts", "EMPTY"], "holds no prompts"),
    ("eval", ["--prompts", "CSV"], "must end in .jsonl or .txt"),
    ("eval", ["--prompts", "BADJSONL"], "not valid JSON"),
    ("eval", ["--prompts", "BINARY"], "cannot read"),
    ("profile", ["--prompts", "DIR"], "is a directory"),
    ("mechanism", ["--prompts", "MISSING"], "not found"),
    ("mechanism", ["--text", "DIR"], "is a directory"),
    ("mechanism", ["--text", "EMPTY"], "is empty"),
    ("stream", ["--text", "MISSING"], "not found"),
    ("stream", ["--text", "BINARY"], "cannot read"),
    ("stream", ["--no-profile", None, "--profile", "MISSINGJSON"], "not found"),
    ("stream", ["--no-profile", None, "--profile", "NOTPROFILE"], "not a sinkhole profile"),
    ("stream", ["--no-profile", None, "--profile", "BIGPROFILE"], "pinned_slots"),
    ("stream", ["--no-profile", None, "--cache", "32", "--profile", "P100"], "too many for --cache 32"),
    ("stream", ["--no-profile", None, "--tokens", "40", "--profile", "P5000"], "position 5000"),
    ("stream", ["--no-profile", None, "--profile", "no-such-shipped-name"], "no shipped profile"),
    ("quant", ["--calib", "MISSING"], "not found"),
    ("quant", ["--backend", None, "--profile", "MISSINGJSON"], "not found"),
    ("profile", ["--show", "MISSINGJSON"], "not found"),
    ("profile", ["--show", "NOTPROFILE"], "not a sinkhole profile"),
]

MODEL_FAULTS = [
    ("NOTOK", "no usable tokenizer"),
    ("MISMATCH", "do not match its config"),
    ("REMOTE", "--trust-remote-code"),
    ("NOCONFIG", "without config.json"),
    ("./no/such/model", "unknown model"),
    ("org/not-in-the-local-cache", "never downloads"),
]


def _cases():
    for cmd, extra, message in _numbers():
        yield pytest.param(cmd, extra, message, id=f"{cmd}{''.join(extra)}")
    for cmd, extra, message in _outputs():
        yield pytest.param(cmd, extra, message, id=f"{cmd}-out{''.join(e or '' for e in extra)}")
    for cmd, extra, message in INPUT_FAULTS:
        yield pytest.param(cmd, extra, message, id=f"{cmd}-in{''.join(e or '' for e in extra)}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    tiny = save_tiny(root / "tiny")
    subst = make_inputs(root / "inputs", tiny)
    subst.update(TINY_CONFIG=str(tiny / "config.json"))
    models = root / "models"
    notok = models / "no-tokenizer"
    notok.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        (notok / f).write_bytes((tiny / f).read_bytes())
    mismatch = models / "mismatch"
    mismatch.mkdir()
    for f in tiny.iterdir():
        (mismatch / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tiny / "config.json").read_text())
    (mismatch / "config.json").write_text(json.dumps({**cfg, "hidden_size": 48, "intermediate_size": 96}))
    remote = models / "remote"
    remote.mkdir()
    for f in tiny.iterdir():
        (remote / f.name).write_bytes(f.read_bytes())
    (remote / "config.json").write_text(
        json.dumps(
            {
                **cfg,
                "model_type": "sinkhole-custom",
                "architectures": ["CustomForCausalLM"],
                "auto_map": {"AutoConfig": "cfg.CustomConfig", "AutoModelForCausalLM": "m.CustomForCausalLM"},
            }
        )
    )
    (models / "noconfig").mkdir()
    subst.update(NOTOK=str(notok), MISMATCH=str(mismatch), REMOTE=str(remote), NOCONFIG=str(models / "noconfig"))
    return root, subst


def _argv(cmd, extra, subst, tmp_path):
    argv = list(BASE[cmd])
    extra = list(extra)
    # a None value removes that flag (and its value) from the base command
    i = 0
    while i < len(extra):
        if i + 1 < len(extra) and extra[i + 1] is None:
            flag = extra[i]
            if flag in argv:
                j = argv.index(flag)
                del argv[j : j + (1 if flag.startswith("--no-") else 2)]
            del extra[i : i + 2]
        else:
            i += 1
    for flag in extra[::2]:  # a flag given again replaces the base's value
        if flag in argv and flag.startswith("--") and not flag.startswith("--no-") and flag in BASE[cmd]:
            j = argv.index(flag)
            del argv[j : j + 2]
    argv += extra
    local = {
        "OUTDIR": str(tmp_path / "run"),
        "SAME": str(tmp_path / "same.out"),
        "OUTDIR_RESULTS": str(tmp_path / "run" / "results.jsonl"),
    }
    if "OUTDIR_RESULTS" in argv:
        (tmp_path / "run").mkdir(exist_ok=True)
        (tmp_path / "run" / "results.jsonl").write_text('{"prompt": "the one"}\n')
    return [local.get(a, subst.get(a, a)) for a in argv]


@pytest.fixture
def untouched(world):
    root, _ = world
    before = tree_hash(root / "inputs", root / "tiny", root / "models")
    yield
    assert tree_hash(root / "inputs", root / "tiny", root / "models") == before, "an input file changed"


@pytest.mark.parametrize("cmd, extra, message", list(_cases()))
def test_bad_input_exit_2(cmd, extra, message, world, tmp_path, capsys, monkeypatch, untouched):
    monkeypatch.setenv("SINKHOLE_CACHE", str(tmp_path / "cache"))
    argv = _argv(cmd, extra, world[1], tmp_path)
    code = main(argv)
    out, err = capsys.readouterr()
    assert_clean_error(code, err, message)
    assert not list(Path(world[0] / "inputs").glob(".*tmp*")) and not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("model, message", MODEL_FAULTS, ids=[m for m, _ in MODEL_FAULTS])
@pytest.mark.parametrize("cmd", ["analyze", "stream"])
def test_model_faults_exit_2(cmd, model, message, world, tmp_path, capsys, monkeypatch, untouched):
    argv = _argv(cmd, [], world[1], tmp_path)
    argv[argv.index("--model") + 1] = world[1].get(model, model)
    code = main(argv)
    assert_clean_error(code, capsys.readouterr().err, message)


def test_cache_path_that_is_a_file(world, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache-file"
    cache.write_text("not a directory")
    monkeypatch.setenv("SINKHOLE_CACHE", str(cache))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    code = main(["analyze", "--model", str(gguf), "--prompt", "hi"])
    assert_clean_error(code, capsys.readouterr().err, "is a file, not a directory")
    assert cache.read_text() == "not a directory"


def test_json_dash_is_stdout(world, tmp_path, capsys, untouched):
    code = main(_argv("analyze", ["--json", "-"], world[1], tmp_path))
    out, err = capsys.readouterr()
    assert code == 0, err
    d = json.loads(out)  # stdout holds only the report; the summary went to stderr
    assert d["schema"] == "sinkhole.report/1" and "Spike tokens" in err


def test_write_failure_after_the_work_keeps_the_result(world, tmp_path, capsys, monkeypatch, untouched):
    """The output passes the up-front check, then the disk 'fills': the report is rescued, and said where."""
    import sinkhole.io as sio

    real = sio.write_atomic
    target = tmp_path / "out" / "r.json"

    def full_disk(path, data):
        if Path(path) == target:
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(sio, "write_atomic", full_disk)
    monkeypatch.chdir(tmp_path)
    code = main(_argv("analyze", ["--json", str(target)], world[1], tmp_path))
    out, err = capsys.readouterr()
    assert_clean_error(code, err, "No space left on device")
    assert "Spike tokens" in out  # the terminal result was still printed
    rescued = list(tmp_path.glob("sinkhole-rescued-*-r.json"))
    assert len(rescued) == 1 and str(rescued[0].name) in err
    assert json.loads(rescued[0].read_text())["schema"] == "sinkhole.report/1"


def test_error_during_a_progress_bar_starts_its_own_line(world, tmp_path, capsys, monkeypatch):
    """An error raised while a progress bar is drawn must not be glued to the bar's line."""
    from tqdm import tqdm

    import sinkhole.probe.probe as probe_mod
    from sinkhole.errors import SinkholeError

    def printer(n_layers, stream=sys.stderr):
        bar = tqdm(total=100, desc="layers", file=stream, leave=False)  # never reaches its end
        return lambda layer: bar.update(1)

    def fail(*args, **kwargs):
        raise SinkholeError("boom")

    monkeypatch.setattr(probe_mod, "progress_printer", printer)
    monkeypatch.setattr(probe_mod.ModelProbe, "_capture", fail)
    code = main(_argv("analyze", [], world[1], tmp_path))
    err = capsys.readouterr().err
    assert_clean_error(code, err, "boom")
    assert "layers" in err and "sinkhole: error: boom" in err.split("\n")


HOLDER = """
import sys, time
from sinkhole.eval.runner import out_lock
with out_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_eval_second_writer_refused(world, tmp_path, capsys, untouched):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        code = main(_argv("eval", ["--out", str(out)], world[1], tmp_path))
        assert_clean_error(code, capsys.readouterr().err, "another sinkhole eval is writing to")
        assert time.monotonic() - t0 < 30  # refused at once, before loading the model
        assert not (out / "results.jsonl").exists()
    finally:
        proc.kill()
        proc.wait()
    code = main(_argv("eval", ["--out", str(out)], world[1], tmp_path))  # the lock died with its holder
    assert code == 0, capsys.readouterr().err
    assert len((out / "results.jsonl").read_text().splitlines()) == 3


def test_eval_kill_9_mid_run_then_resume(world, tmp_path, capsys, untouched):
    """kill -9 of a CLI eval part way: the rerun completes every prompt once, no temp file is left,
    and the dead process's lock does not block the rerun."""
    import os
    import random
    import signal

    from faults_common import WORDS

    rng = random.Random(0)
    suite = tmp_path / "suite.txt"
    suite.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 40))) for _ in range(120)))
    out = tmp_path / "run"
    argv = [
        "eval",
        "--model",
        world[1]["TINY"],
        "--prompts",
        str(suite),
        "--out",
        str(out),
        "--no-figures",
        "--threads",
        "1",
    ]
    # one prompt per forward, so the kill lands part way; batching does not change the numbers
    proc = subprocess.Popen(
        [sys.executable, "-m", "sinkhole.cli.main", *argv, "--max-batch", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    results = out / "results.jsonl"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if results.is_file() and results.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"eval ended before the kill: {proc.stderr.read().decode()[-1000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    before = results.read_bytes().count(b"\n")
    assert 2 <= before < 120
    assert main(argv) == 0, capsys.readouterr().err
    indices = [json.loads(line)["index"] for line in results.read_text().splitlines()]
    assert sorted(indices) == list(range(120)), "a row was lost or duplicated"
    assert not [p for p in out.iterdir() if "tmp" in p.name]
