"""The fault matrix over the public Python API, the converted-GGUF cache (verification, repair,
locking, kill -9 during conversion), offline mode (no request leaves the process) and the
checked writer. Every bad call raises SinkholeError with a one-line message."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_llama, wrap
from faults_common import assert_one_line, profile_dict, save_tiny

from sinkhole.errors import SinkholeError

NAN, INF = math.nan, math.inf


@pytest.fixture(scope="module")
def probe():
    from sinkhole.probe.probe import ModelProbe

    return ModelProbe(wrap(tiny_llama()), top_k=4)


@pytest.fixture(scope="module")
def capture(probe):
    return probe.run([1, 5, 7, 9, 11, 13])


def _analyze(capture, **kw):
    from sinkhole import analyze

    return analyze(capture, **kw)


API_CASES = [
    ("analyze(None)", lambda p, c: _analyze(None), "needs a Capture"),
    ("analyze('text')", lambda p, c: _analyze("some text"), "needs a Capture"),
    *[
        (f"analyze(threshold={v!r})", lambda p, c, v=v: _analyze(c, threshold=v), "threshold")
        for v in (NAN, INF, -INF, -1, 0, 0.5, "10", None, True)
    ],
    *[
        (f"analyze(epsilon={v!r})", lambda p, c, v=v: _analyze(c, epsilon=v), "epsilon")
        for v in ("0.3", 2, -0.1, 0, NAN, INF)
    ],
    *[
        (f"analyze(min_sink_rate={v!r})", lambda p, c, v=v: _analyze(c, min_sink_rate=v), "min_sink_rate")
        for v in (1.5, 0, NAN, "0.5")
    ],
    ("run([60000])", lambda p, c: p.run([60000]), "outside the vocabulary"),
    ("run([-1])", lambda p, c: p.run([-1]), "outside the vocabulary"),
    ("run([99])", lambda p, c: p.run([1, 99]), "outside the vocabulary"),
    ("run([1.5])", lambda p, c: p.run([1, 1.5]), "integers"),
    ("run(['a'])", lambda p, c: p.run(["a", "b"]), "integers"),
    ("run([])", lambda p, c: p.run([]), "empty"),
    ("run(None)", lambda p, c: p.run(None), "a prompt is a string"),
    ("run(3)", lambda p, c: p.run(3), "a prompt is a string"),
    ("run_batch('abc')", lambda p, c: p.run_batch("abc"), "list of prompts"),
    ("run_batch([])", lambda p, c: p.run_batch([]), "no prompts"),
    ("ModelProbe(None)", lambda p, c: __import__("sinkhole").ModelProbe(None), "model must be"),
    ("ModelProbe(nonexistent)", lambda p, c: __import__("sinkhole").ModelProbe("nonexistent-model"), "unknown model"),
    (
        "load_model(device=5)",
        lambda p, c: __import__("sinkhole").load_model("smollm2-135m", device=5),
        "device must be",
    ),
    (
        "load_model(dtype=32)",
        lambda p, c: __import__("sinkhole").load_model("smollm2-135m", dtype=32),
        "dtype must be",
    ),
    (
        "load_model(dtype=int8)",
        lambda p, c: __import__("sinkhole").load_model("smollm2-135m", dtype="int8"),
        "unknown dtype",
    ),
    (
        "load_model(trust='yes')",
        lambda p, c: __import__("sinkhole").load_model("x/y", trust_remote_code="yes"),
        "trust_remote_code",
    ),
    ("load_profile(None)", lambda p, c: _load_profile(None), "load_profile needs"),
    ("load_profile('')", lambda p, c: _load_profile(""), "load_profile needs"),
    ("load_profile(123)", lambda p, c: _load_profile(123), "load_profile needs"),
    ("load_profile(dir)", lambda p, c: _load_profile("/tmp"), "is a directory"),
    ("load_profile(missing)", lambda p, c: _load_profile("/no/such/profile.json"), "no profile file"),
    ("load_suite(None)", lambda p, c: _load_suite(None), "load_suite needs"),
    ("load_suite('')", lambda p, c: _load_suite(""), "load_suite needs"),
    ("load_suite(limit=0)", lambda p, c: _load_suite("builtin", 0), "limit"),
    ("load_suite(limit=2.5)", lambda p, c: _load_suite("builtin", 2.5), "limit"),
    ("load_suite(limit=-1)", lambda p, c: _load_suite("builtin", -1), "limit"),
    ("SinkCache(n_sink=2.5)", lambda p, c: _cache(p, n_sink=2.5), "n_sink"),
    ("SinkCache(n_sink=-1)", lambda p, c: _cache(p, n_sink=-1), "n_sink"),
    ("SinkCache(n_sink='4')", lambda p, c: _cache(p, n_sink="4"), "n_sink"),
    ("SinkCache(window=10.7)", lambda p, c: _cache(p, window=10.7), "window"),
    ("SinkCache(window=1)", lambda p, c: _cache(p, window=1), "window"),
    ("SinkCache(window=nan)", lambda p, c: _cache(p, window=NAN), "window"),
    ("SinkCache(model=name)", lambda p, c: _cache(p, model="smollm2-135m"), "loaded model object"),
    ("SinkCache(model=None)", lambda p, c: _cache(p, model=None), "loaded model object"),
    ("SinkCache(sink_positions=[-1])", lambda p, c: _cache(p, sink_positions=[-1]), "sink position"),
    ("SinkCache(sink_positions='ab')", lambda p, c: _cache(p, sink_positions="ab"), "sink_positions"),
    ("profile_positions(1e9 slots)", lambda p, c: _positions(10**9), "pinned_slots"),
    ("run_eval(threshold=nan)", lambda p, c: _run_eval(p, threshold=NAN), "threshold"),
    ("run_eval(epsilon=0)", lambda p, c: _run_eval(p, epsilon=0), "epsilon"),
    ("SinkDetector(threshold=-3)", lambda p, c: _detect(p, threshold=-3), "threshold"),
]


def _load_profile(x):
    from sinkhole import load_profile

    return load_profile(x)


def _load_suite(x, limit=None):
    from sinkhole.eval import load_suite

    return load_suite(x, limit)


def _cache(probe, **kw):
    from sinkhole import SinkCache

    kw.setdefault("model", probe.model)
    return SinkCache(**kw)


def _positions(slots):
    from types import SimpleNamespace

    from sinkhole.cache.sink_cache import profile_positions

    return profile_positions(SimpleNamespace(pinned_slots=slots, sink_positions=[0]))


def _run_eval(probe, **kw):
    from sinkhole.eval import EvalSettings, Suite, SuiteItem, run_eval

    return run_eval(probe, Suite("t", [SuiteItem(0, [1, 2, 3], "a")]), None, EvalSettings(**kw))


def _detect(probe, **kw):
    from sinkhole.eval import Suite, SuiteItem
    from sinkhole.experiments.detector import SinkDetector

    return SinkDetector(probe, prompts=Suite("t", [SuiteItem(0, [1, 2, 3], "a")]), **kw).detect()


@pytest.mark.parametrize("name, call, message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_one_line(name, call, message, probe, capture):
    t0 = time.monotonic()
    with pytest.raises(SinkholeError) as err:
        call(probe, capture)
    assert_one_line(err.value, message)
    assert time.monotonic() - t0 < 60  # e.g. 1e9 pinned slots is refused, not enumerated


def test_api_good_values_still_work(probe, capture):
    from sinkhole import SinkCache

    assert _analyze(capture, threshold=10, epsilon=0.3, min_sink_rate=0.5).to_dict()["schema"] == "sinkhole.report/1"
    assert _analyze(capture, threshold=1, epsilon=1.0, min_sink_rate=1.0)
    import numpy as np
    import torch

    assert probe.run(torch.tensor([1, 2, 3])).n_tokens == 3 and probe.run(np.array([1, 2, 98])).n_tokens == 3
    assert SinkCache(n_sink=np.int64(2), window=8, model=probe.model).n_sink == 2


# --- offline ------------------------------------------------------------------------------------


def test_no_request_leaves_the_process(monkeypatch, tmp_path):
    """With HF_HUB_OFFLINE unset and huggingface_hub already imported online, loading a hub id that
    is not in the local cache must fail cleanly without a single connection attempt."""
    import huggingface_hub.constants as hub_constants

    from sinkhole.probe.probe import ModelProbe

    attempts = []

    def deny(*args, **kwargs):
        attempts.append(args)
        raise OSError("a network request left the process")

    monkeypatch.setattr(socket.socket, "connect", deny)
    monkeypatch.setattr(socket.socket, "connect_ex", deny)
    monkeypatch.setattr(socket, "create_connection", deny)
    monkeypatch.setattr(socket, "getaddrinfo", deny)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for model in ("meta-llama/Llama-3-8B", "org/not-there"):
        with pytest.raises(SinkholeError) as err:
            ModelProbe(model)
        assert_one_line(err.value, "never downloads")
    assert attempts == []


# --- the converted-GGUF cache -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-src"))


@pytest.fixture
def fake_gguf(tiny_src, tmp_path, monkeypatch):
    """A .gguf file whose 'conversion' copies the tiny model (the cache logic is what is tested)."""
    import sinkhole.models.gguf_cache as gc

    monkeypatch.setenv("SINKHOLE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF-test" + os.urandom(32))
    calls = []

    def convert(src, out, digest):
        calls.append(out)
        shutil.copytree(tiny_src, out)

    monkeypatch.setattr(gc, "convert_into", convert)
    return gguf, calls


def _load(gguf, logs):
    from sinkhole.probe.loading import load_model

    return load_model(str(gguf), log=logs.append)


def _weights(lm):
    return {k: v.clone() for k, v in lm.model.state_dict().items()}


def test_cache_converts_once_and_records_integrity(fake_gguf, tmp_path):
    gguf, calls = fake_gguf
    logs = []
    lm = _load(gguf, logs)
    entry = Path(lm.model.config._name_or_path)
    record = json.loads((entry / "sinkhole-integrity.json").read_text())
    assert "model.safetensors" in record["files"] and len(record["files"]["model.safetensors"]["xxh3_128"]) == 32
    _load(gguf, logs)
    assert len(calls) == 1 and sum("converting" in m for m in logs) == 1
    assert not [p for p in entry.parent.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("damage", ["flip", "flip-same-stamp", "truncate", "delete", "config"])
def test_damaged_cache_entry_is_rebuilt(damage, fake_gguf):
    gguf, calls = fake_gguf
    logs = []
    good = _weights(_load(gguf, logs))
    entry = next(p for p in (Path(os.environ["SINKHOLE_CACHE"]) / "gguf").iterdir() if not p.name.startswith("."))
    w = entry / "model.safetensors"
    data = bytearray(w.read_bytes())
    if damage == "flip":  # same size, a few weight bytes changed (the mtime changes with the write)
        data[len(data) // 2 : len(data) // 2 + 8] = b"\x7f" * 8
        w.write_bytes(bytes(data))
    elif damage == "flip-same-stamp":  # bit rot: 4 KB changed in place, size, mtime and inode kept
        st = w.stat()
        with open(w, "r+b") as f:
            f.seek(len(data) // 2)
            f.write(bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 4096]))
        os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert (w.stat().st_size, w.stat().st_mtime_ns, w.stat().st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    elif damage == "truncate":
        w.write_bytes(bytes(data[: len(data) - 100]))
    elif damage == "delete":
        w.unlink()
    else:
        (entry / "config.json").write_text("{not json")
    logs.clear()
    again = _weights(_load(gguf, logs))
    assert len(calls) == 2, logs
    notices = [m for m in logs if "is damaged" in m]
    assert len(notices) == 1 and "\n" not in notices[0] and "rebuilding" in notices[0]
    assert all((good[k] == again[k]).all() for k in good)


def test_legacy_entry_without_integrity_record_is_adopted(fake_gguf):
    gguf, calls = fake_gguf
    lm = _load(gguf, [])
    entry = Path(lm.model.config._name_or_path)
    (entry / "sinkhole-integrity.json").unlink()
    logs = []
    _load(gguf, logs)
    assert (entry / "sinkhole-integrity.json").is_file() and len(calls) == 1
    assert sum("has no content hash" in m for m in logs) == 1, logs
    logs.clear()
    _load(gguf, logs)  # recorded now: no notice the second time
    assert not [m for m in logs if "older sinkhole" in m]


def test_legacy_sha256_record_is_checked_then_gets_the_fast_hash(fake_gguf):
    from sinkhole.io import sha256_of

    gguf, calls = fake_gguf
    lm = _load(gguf, [])
    entry = Path(lm.model.config._name_or_path)
    names = [p.name for p in entry.iterdir() if p.is_file() and p.name != "sinkhole-integrity.json"]
    old = {n: {"size": (entry / n).stat().st_size, "sha256": sha256_of(entry / n)} for n in names}
    (entry / "sinkhole-integrity.json").write_text(json.dumps({"files": old}))
    logs = []
    _load(gguf, logs)
    assert sum("checked against its sha256" in m for m in logs) == 1 and len(calls) == 1
    record = json.loads((entry / "sinkhole-integrity.json").read_text())["files"]
    assert all("xxh3_128" in record[n] for n in names)
    # A legacy record that does not match is damage like any other.
    old["model.safetensors"]["sha256"] = "0" * 64
    (entry / "sinkhole-integrity.json").write_text(json.dumps({"files": old}))
    logs.clear()
    _load(gguf, logs)
    assert len(calls) == 2 and sum("sha256 differs" in m for m in logs) == 1


def test_models_verify_checks_every_entry(fake_gguf, capsys):
    from sinkhole.cli.main import main

    gguf, calls = fake_gguf
    entry = Path(_load(gguf, []).model.config._name_or_path)
    assert main(["models", "--verify"]) == 0
    assert f"{entry.name}  tiny.gguf  ok" in capsys.readouterr().out
    w = entry / "model.safetensors"
    st = w.stat()
    with open(w, "r+b") as f:
        f.seek(st.st_size - 64)
        f.write(b"\x00" * 64)
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert main(["models", "--verify"]) == 1
    assert "DAMAGED: model.safetensors changed since it was written (xxh3_128 differs)" in capsys.readouterr().out
    assert len(calls) == 1  # verify converts nothing


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_folders_are_removed(fake_gguf):
    gguf, calls = fake_gguf
    _load(gguf, [])
    root = Path(os.environ["SINKHOLE_CACHE"]) / "gguf"
    stale = root / f".abc.tmp{_dead_pid()}"
    (stale / "x").mkdir(parents=True)
    live = root / f".abc.tmp{os.getpid()}"  # a conversion still running: kept
    live.mkdir()
    _load(gguf, [])
    assert not stale.exists() and live.exists()


KILLABLE = """
import os, shutil, sys, time
import sinkhole.models.gguf_cache as gc

def slow_convert(src, out, digest):
    shutil.copytree(sys.argv[2], out)
    print("converting", flush=True)
    time.sleep(float(sys.argv[3]))

gc.convert_into = slow_convert
print(gc.converted_gguf_dir(sys.argv[1], log=lambda m: None)[0], flush=True)
"""


def _converter(gguf, tiny_src, seconds):
    return subprocess.Popen(
        [sys.executable, "-c", KILLABLE, str(gguf), str(tiny_src), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )


def test_kill_9_during_conversion_leaves_nothing_and_next_run_works(fake_gguf, tiny_src):
    gguf, calls = fake_gguf
    proc = _converter(gguf, tiny_src, 60)
    try:
        assert proc.stdout.readline().strip() == "converting"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    root = Path(os.environ["SINKHOLE_CACHE"]) / "gguf"
    assert [p for p in root.iterdir() if ".tmp" in p.name], "the killed conversion should have left its folder"
    lm = _load(gguf, [])
    assert lm.model.config.hidden_size == 32 and len(calls) == 1
    assert not [p for p in root.iterdir() if ".tmp" in p.name or ".old" in p.name]


def test_concurrent_conversion_waits_and_reuses(fake_gguf, tiny_src):
    gguf, calls = fake_gguf
    proc = _converter(gguf, tiny_src, 2)
    try:
        assert proc.stdout.readline().strip() == "converting"
        logs = []
        lm = _load(gguf, logs)  # waits for the other process, then uses its result
        out = proc.stdout.readline().strip()
    finally:
        proc.wait()
    assert proc.returncode == 0 and calls == [], logs
    assert any("waiting for another sinkhole process" in m for m in logs)
    assert Path(lm.model.config._name_or_path) == Path(out)


# --- the checked writer -------------------------------------------------------------------------


def test_failed_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from sinkhole import io as sio

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sio.os, "fsync", boom)
    with pytest.raises(OSError):
        sio.write_atomic(tmp_path / "out.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_write_output_rescues_and_says_where(tmp_path, monkeypatch):
    from sinkhole import io as sio

    real = sio.write_atomic
    monkeypatch.setattr(
        sio,
        "write_atomic",
        lambda p, d: (
            (_ for _ in ()).throw(OSError(5, "I/O error")) if Path(p).parent == tmp_path / "gone" else real(p, d)
        ),
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SinkholeError) as err:
        sio.write_output(tmp_path / "gone" / "r.json", '{"x": 1}', "report")
    assert_one_line(err.value, "saved to")
    rescued = list(tmp_path.glob("sinkhole-rescued-*-r.json"))
    assert len(rescued) == 1 and json.loads(rescued[0].read_text()) == {"x": 1}


def test_profile_with_too_many_slots_is_malformed(tmp_path):
    from sinkhole import load_profile

    p = tmp_path / "p.json"
    p.write_text(json.dumps(profile_dict(pinned_slots=10**9)))
    with pytest.raises(SinkholeError) as err:
        load_profile(p)
    assert_one_line(err.value, "pinned_slots")


def test_temporary_file_of_a_killed_write_is_removed_by_the_next(tmp_path):
    from sinkhole.io import write_atomic

    stale = tmp_path / f".out.json.{_dead_pid()}.abc123.tmp"
    stale.write_text("half")
    live = tmp_path / f".out.json.{os.getpid()}.def456.tmp"  # a write in progress: kept
    live.write_text("half")
    write_atomic(tmp_path / "out.json", "{}")
    assert not stale.exists() and live.exists() and (tmp_path / "out.json").read_text() == "{}"
