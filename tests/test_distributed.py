"""Runs past one process (sinkhole.distributed): sharding, agreement, and torchrun jobs of 1-3 gloo
ranks on the CPU, launched as subprocesses, whose merged outputs must equal one process's byte for byte."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama, wrap
from faults_common import WORDS, save_tiny

from sinkhole.distributed import Placement, RankError, World, balanced_shards
from sinkhole.errors import SinkholeError
from sinkhole.eval import EvalSettings, Suite, SuiteItem, run_eval

TESTS = Path(__file__).resolve().parent
DRIVER = TESTS / "dist_driver.py"
# Low threshold/epsilon so that the tiny random model has spike and sink tokens; 3 prompts a batch
# so that 40 prompts make enough batches to share and to kill part way.
EVAL_ARGS = ["--threshold", "1.1", "--epsilon", "0.1", "--max-batch", "3", "--no-figures"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The tiny model, a 40-prompt suite of 2-39 words, and the one-process run's output directory."""
    from sinkhole.cli.main import main

    root = tmp_path_factory.mktemp("dist")
    model = save_tiny(root / "tiny", max_position_embeddings=256)
    rng = random.Random(0)
    prompts = root / "prompts.txt"
    prompts.write_text(
        "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randrange(2, 40))) + "\n" for _ in range(40))
    )
    base = ["eval", "--model", str(model), "--prompts", str(prompts), *EVAL_ARGS]
    ref = root / "one"
    assert main([*base, "--out", str(ref)]) == 0
    return {"root": root, "model": model, "base": base, "ref": ref}


def torchrun(n: int, args: list[str], env: dict | None = None, driver: bool = False, accelerate=False, **kw):
    """Start `torchrun --standalone --nproc-per-node n -m sinkhole ARGS` (or the test driver), or with
    `accelerate`, `accelerate launch --multi_gpu --num_processes n -m sinkhole ARGS` (its multi-process
    mode, which needs no GPU: the ranks run on the CPU with gloo)."""
    target = [str(DRIVER)] if driver else ["-m", "sinkhole"]
    if accelerate:
        launcher = [
            str(Path(sys.executable).parent / "accelerate"),
            "launch",
            "--multi_gpu",
            "--num_processes",
            str(n),
        ]
        launcher += ["--main_process_port", "0", "--num_machines", "1", "--mixed_precision", "no"]
        launcher += ["--dynamo_backend", "no"]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)]
    cmd = [*launcher, *target, *args]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        **kw,
    )


def launched(n: int, args: list[str], accelerate: bool = False) -> tuple[int, str, str]:
    """The command on n ranks to its end. Ranks that succeed must have torn their process group down:
    no gloo thread left when the command returns (one alive at interpreter exit can abort the rank,
    see `distributed.session`)."""
    with tempfile.TemporaryDirectory() as d:
        code, out, err = finish(torchrun(n, args, {"SINKHOLE_TEST_THREADS": d}, driver=True, accelerate=accelerate))
        if code == 0:
            for r in range(n):
                threads = Path(d, f"threads-{r}").read_text().splitlines()
                assert not [t for t in threads if "gloo" in t], f"rank {r} exits with {threads}"
    return code, out, err


def ranks(n: int, args: list[str], capsys) -> tuple[int, str, str]:
    """The command on n torchrun ranks (`launched`), or for n = 1 in this process (one launcher
    start less)."""
    if n > 1:
        return launched(n, args)
    from sinkhole.cli.main import main

    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def finish(proc, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def same_outputs(a: Path, b: Path) -> None:
    for name in ("results.jsonl", "run.json", "summary.json", "rows.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert not (b / "shards").exists()


# --- the helper ------------------------------------------------------------------------------------


def test_balanced_shards_cover_everything_once_and_balance_cost():
    rng = random.Random(1)
    costs = [rng.randrange(1, 500) for _ in range(57)]
    for n in (1, 2, 3, 8):
        shards = balanced_shards(costs, n)
        assert sorted(i for s in shards for i in s) == list(range(57))
        assert all(s == sorted(s) for s in shards)
        loads = [sum(costs[i] for i in s) for s in shards]
        assert max(loads) - min(loads) <= max(costs)
        assert shards == balanced_shards(costs, n)  # every rank computes the same split
    assert balanced_shards([5, 1], 3) == [[0], [1], []]


def test_placement_from_launcher_environment():
    assert Placement.from_env({}) == Placement(0, 1, 0, 1) and not Placement.from_env({}).launched
    p = Placement.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert p.launched and not p.is_main and p.device("cuda") == "cuda:1" and p.device("cpu") == "cpu"
    assert p.device("auto") == ("cuda:1" if torch.cuda.is_available() else "cpu")
    assert p.cpu_threads(16) == 8 and p.cpu_threads(1) == 1
    with pytest.raises(SinkholeError, match="--device cuda:0 under a launcher"):
        p.device("cuda:0")
    with pytest.raises(SinkholeError, match="inconsistent launcher variables"):
        Placement.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(SinkholeError, match="not an integer"):
        Placement.from_env({"WORLD_SIZE": "two"})


def test_a_rank_owning_a_group_of_gpus():
    # 2 ranks on this machine, 2 GPUs each: local rank 1 owns the machine's third and fourth GPU
    p = Placement.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert p.gpu_group(2) == ["2", "3"] and p.gpu_group(1) == ["1"]
    assert p.gpu_group(2, visible="4,5,6,7") == ["6", "7"]  # indices into what the launcher made visible
    assert p.device("cuda", gpus_per_rank=2) == "auto"  # spread over the group (accelerate's device map)
    with pytest.raises(SinkholeError, match="needs 4 GPUs; CUDA_VISIBLE_DEVICES lists 3"):
        p.gpu_group(2, visible="0,1,2")
    assert Placement().device("cuda", gpus_per_rank=2) == "cuda"  # outside a launcher nothing changes


def test_world_of_one_is_plain_calls():
    w = World()
    assert w.gather(5) == [5] and w.broadcast("x") == "x" and w.shard([3, 1, 2]) == [0, 1, 2]
    w.agree({"a": 1})
    with pytest.raises(SinkholeError, match="boom") as info:
        w.all_ok(lambda: (_ for _ in ()).throw(SinkholeError("boom")))
    assert not isinstance(info.value, RankError)
    c = w.new_counter()
    assert w.add(c, 2) == 2 and w.add(c, 3) == 5
    w.wait_all(c)


class FakeStore:
    """torch.distributed's key-value store as the ranks share it (TCPStore.add), in one process."""

    def __init__(self):
        import threading

        self.lock, self.values = threading.Lock(), {}

    def add(self, key: str, n: int) -> int:
        with self.lock:
            self.values[key] = self.values.get(key, 0) + n
            return self.values[key]


def fake_ranks(n: int, timeout: float = 30.0) -> list[World]:
    store = FakeStore()
    worlds = [World(Placement(r, n, r, n), timeout=timeout) for r in range(n)]
    for w in worlds:
        w._store = store
    return worlds


def test_rank_0_shows_every_ranks_progress():
    import threading

    zero, one = fake_ranks(2)
    seen = []
    tallies = [zero.tally(seen.append), one.tally(lambda n: seen.append(("rank 1 printed", n)))]

    def rank_one():
        for n in (3, 2, 5):
            tallies[1].step(n)
        tallies[1].wait()

    t = threading.Thread(target=rank_one)
    t.start()
    tallies[0].step(4)
    tallies[0].wait()
    t.join()
    assert sum(seen) == 14 and all(isinstance(x, int) for x in seen)  # all of it, on rank 0 alone


def test_a_rank_that_stops_making_progress_is_given_up_on():
    zero, one = fake_ranks(2, timeout=0.3)
    tally = zero.tally()
    one.tally().step(1)  # rank 1 did one step, then died without a launcher to stop the job
    tally.step(1)
    with pytest.raises(SinkholeError, match="rank 0 of 2: 1 rank.s. made no progress for 0 s"):
        tally.wait()


# --- what makes rows identical -------------------------------------------------------------------


def id_suite(n: int, seed: int = 0) -> Suite:
    rng = random.Random(seed)
    return Suite(
        "test", [SuiteItem(i, [rng.randrange(1, 99) for _ in range(rng.randrange(2, 40))], "x") for i in range(n)]
    )


def test_thread_count_does_not_change_rows():
    """Ranks on one machine run with fewer threads than one process: the rows must not move a bit."""
    from sinkhole.probe.probe import ModelProbe

    probe = ModelProbe(wrap(tiny_llama(hidden_size=64, intermediate_size=256)), top_k=4)
    suite, settings = id_suite(12), EvalSettings(threshold=1.1, epsilon=0.1, max_batch=4)
    before = torch.get_num_threads()
    try:
        rows = {}
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            rows[n] = [r.to_dict() for r in run_eval(probe, suite, None, settings)]
    finally:
        torch.set_num_threads(before)
    assert rows[1] == rows[2] == rows[3]


def test_resume_computes_each_prompt_in_its_original_batch(tmp_path):
    """Rows missing anywhere (a kill part way through batches, on any rank) are redone in the batches
    of the uninterrupted run, so the resumed file equals it byte for byte, not only within rounding."""
    from sinkhole.probe.probe import ModelProbe

    probe = ModelProbe(wrap(tiny_llama()), top_k=4)
    suite, settings = id_suite(30, seed=4), EvalSettings(threshold=1.1, epsilon=0.1, max_batch=4)
    full = tmp_path / "full"
    run_eval(probe, suite, full, settings)
    lines = (full / "results.jsonl").read_bytes().splitlines(keepends=True)
    assert [json.loads(x)["index"] for x in lines] == list(range(30))  # suite order
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(full / "run.json", part / "run.json")
    keep = random.Random(2).sample(lines, 17)
    (part / "results.jsonl").write_bytes(b"".join(keep[:9]))
    (part / "shards").mkdir()
    (part / "shards" / "rank-2.jsonl").write_bytes(b"".join(keep[9:]) + keep[0][:20])  # a cut last line
    rows = run_eval(probe, suite, part, settings)
    assert (part / "results.jsonl").read_bytes() == (full / "results.jsonl").read_bytes()
    assert not (part / "shards").exists() and [r.index for r in rows] == list(range(30))


def test_other_settings_are_refused_before_the_model_loads(job, tmp_path, monkeypatch, capsys):
    import sinkhole.cli.common as common
    from sinkhole.cli.main import main

    out = tmp_path / "run"
    shutil.copytree(job["ref"], out)

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(common, "load_probe", no_load)  # what cli.common.load_locked calls
    assert main([*job["base"], "--out", str(out), "--threshold", "20"]) == 2
    assert "other settings (settings.threshold 1.1 -> 20.0)" in capsys.readouterr().err


# --- torchrun jobs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_ranks_write_what_one_process_writes(job, launcher):
    out = job["root"] / f"two-{launcher}"
    code, stdout, stderr = launched(2, [*job["base"], "--out", str(out)], accelerate=launcher == "accelerate")
    assert code == 0, stderr[-3000:]
    same_outputs(job["ref"], out)
    assert stdout.count("Eval ") == 1 and stderr.count("loading ") == 1  # rank 0 speaks for the run


def _wait_for_rows(out: Path, n: int, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = [out / "results.jsonl", out / "shards" / "rank-1.jsonl"]
        if all(f.is_file() and f.read_bytes().count(b"\n") >= n for f in files):
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError("no rows appeared")


def test_kill_9_a_rank_then_resume_with_3_ranks_and_with_1(job, tmp_path):
    from sinkhole.cli.main import main

    env = {"SINKHOLE_TEST_DELAY": "0.5"}
    # 1. kill -9 of one rank: the launcher stops the other, within bounded time, saying why.
    out, pids = tmp_path / "a", tmp_path / "pids"
    pids.mkdir()
    proc = torchrun(2, [*job["base"], "--out", str(out)], {**env, "SINKHOLE_TEST_PIDS": str(pids)}, driver=True)
    _wait_for_rows(out, 2, proc)
    os.kill(int((pids / "rank-1").read_text()), signal.SIGKILL)
    code, _, stderr = finish(proc, timeout=120)
    assert code != 0 and "Signal 9" in stderr, stderr[-3000:]
    assert "sinkhole: rank 0 of 2 stopped by the launcher" in stderr
    assert len(list(out.glob("results.jsonl"))) == 1 and not (out / "summary.json").exists()
    code, _, stderr = finish(torchrun(3, [*job["base"], "--out", str(out)]))
    assert code == 0, stderr[-3000:]
    assert "resuming: " in stderr
    same_outputs(job["ref"], out)

    # 2. kill -9 of every process of the job, then resume with one process.
    out = tmp_path / "b"
    proc = torchrun(2, [*job["base"], "--out", str(out)], env, driver=True, start_new_session=True)
    _wait_for_rows(out, 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc, timeout=60)
    assert main([*job["base"], "--out", str(out)]) == 0
    same_outputs(job["ref"], out)


@pytest.mark.parametrize("case", ["threshold", "model", "missing"])
def test_a_rank_that_disagrees_stops_the_run_with_one_line(job, case):
    other = {
        "threshold": ["--threshold", "20"],
        "model": ["--model", str(save_tiny(job["root"] / "wider", max_position_embeddings=256, intermediate_size=96))]
        if not (job["root"] / "wider").exists()
        else ["--model", str(job["root"] / "wider")],
        "missing": ["--model", str(job["root"] / "nowhere")],
    }[case]
    out = job["root"] / f"refused-{case}"
    env = {"SINKHOLE_TEST_RANK_ARGS": json.dumps({"1": other})}
    code, stdout, stderr = finish(torchrun(2, [*job["base"], "--out", str(out)], env, driver=True))
    errors = [ln for ln in stderr.splitlines() if ln.startswith("sinkhole: error:")]
    assert code != 0 and len(errors) == 1, stderr[-3000:]
    assert "rank 1 of 2" in errors[0] and "Traceback" not in stderr.split("sinkhole: error:")[0]
    assert not out.exists() and stdout == ""


def _without_timings(d: dict) -> dict:
    d = dict(d)
    for k in ("seconds", "tokens_per_second", "environment"):
        d.pop(k, None)
    if "variants" in d:
        d["variants"] = [{k: v for k, v in x.items() if k != "seconds"} for x in d["variants"]]
    return d


def test_vocab_sweep_under_two_ranks_equals_one_process(job, tmp_path, capsys):
    args = ["vocab-sweep", "--model", str(job["model"]), "--sample", "64", "--batch-size", "16"]
    args += ["--threshold", "1.05", "--dtype", "float32"]
    results = {}
    for n in (1, 2):
        code, stdout, stderr = ranks(n, [*args, "--json", str(tmp_path / f"{n}.json")], capsys)
        assert code == 0, stderr[-3000:]
        results[n] = (json.loads((tmp_path / f"{n}.json").read_text()), stdout)
    assert results[1][0]["n_tokens"] == 64 and results[1][0]["n_spike"] > 0
    assert _without_timings(results[1][0]) == _without_timings(results[2][0])
    tables = [results[n][1].splitlines() for n in (1, 2)]  # printed once; its first line has the speed
    assert tables[0][1:] == tables[1][1:] and tables[1][0].count(str(job["model"])) == 1


def test_profile_under_two_ranks_equals_one_process(job, tmp_path, capsys):
    """The prompt passes (eval batches), the streaming-score passes (copy prompts) and the loss deltas'
    forwards (--loss) are all shared."""
    args = ["profile", "--model", str(job["model"]), "--prompts", str(job["root"] / "prompts.txt")]
    args += ["--threshold", "1.1", "--epsilon", "0.1", "--stream-prompts", "3", "--stream-window", "16"]
    args += ["--loss", "--loss-length", "256", "--loss-samples", "2", "--loss-select", "0.3", "--loss-window", "32"]
    for n in (1, 2):
        code, stdout, stderr = ranks(n, [*args, "--json", str(tmp_path / f"{n}.json")], capsys)
        assert code == 0, stderr[-3000:]
        assert stdout.count("streaming scores") == 1
    one = json.loads((tmp_path / "1.json").read_text())
    assert one["streaming"]["scores"] and one["prompts"]["count"] == 40
    assert one["streaming"]["loss"]["samples"] == 2 and any(
        v for row in one["streaming"]["loss"]["select"] for v in row
    )
    assert (tmp_path / "1.json").read_bytes() == (tmp_path / "2.json").read_bytes()


def test_lab_under_two_ranks_equals_one_process(tmp_path, capsys):
    """2 variants x 2 seeds: four independent trainings, two a rank."""
    args = ["lab", "--variants", "baseline,gated", "--seeds", "0,1", "--steps", "12", "--checkpoints", "2"]
    args += ["--no-figures"]
    labs = {}
    for n in (1, 2):
        code, stdout, stderr = ranks(n, [*args, "--out", str(tmp_path / str(n))], capsys)
        assert code == 0, stderr[-3000:]
        labs[n] = json.loads((tmp_path / str(n) / "lab.json").read_text())
        assert not (tmp_path / str(n) / "shards").exists() and stdout.count("Verdict rule") == 1  # rank 0 prints
    runs = labs[2]["variants"]
    assert [(v["name"], v["seed"]) for v in runs] == [("baseline", 0), ("baseline", 1), ("gated", 0), ("gated", 1)]
    assert all(v["finished"] for v in runs) and runs[0]["checkpoints"] != runs[1]["checkpoints"]
    assert _without_timings(labs[1]) == _without_timings(labs[2])


def test_out_that_a_rank_cannot_see_is_refused_before_any_forward(job, tmp_path):
    """Machines without a shared filesystem, simulated: rank 1's --out is another directory."""
    env = {"SINKHOLE_TEST_RANK_ARGS": json.dumps({"1": ["--out", str(tmp_path / "elsewhere")]})}
    code, _, stderr = finish(torchrun(2, [*job["base"], "--out", str(tmp_path / "run")], env, driver=True))
    errors = [ln for ln in stderr.splitlines() if ln.startswith("sinkhole: error:")]
    assert code != 0 and len(errors) == 1 and "must be on a filesystem every rank sees" in errors[0], stderr[-3000:]
    assert not (tmp_path / "run" / "results.jsonl").exists() and not (tmp_path / "elsewhere").exists()


def test_lab_resumes_runs_any_rank_finished(tmp_path):
    """Runs finished by rank 0 (lab.json) or by another rank (shards/<variant>-seed<s>.json) of a
    killed job are kept by the next run, whatever its world size; the rest train again, identically."""
    from dataclasses import replace

    from sinkhole.lab.run import LabResult, LabSettings, TrainConfig, run_lab

    s = LabSettings(variants=("baseline", "gated"), seeds=(0, 1))
    s = replace(s, train=TrainConfig(steps=4, lr=1e-2, weight_decay=0.1, n_checkpoints=2, probe_batch=4))
    full = run_lab(s, tmp_path / "full")
    assert [v.label for v in full.variants] == ["baseline seed 0", "baseline seed 1", "gated seed 0", "gated seed 1"]
    part = tmp_path / "part"
    (part / "shards").mkdir(parents=True)
    keep = lambda *vs: json.dumps(LabResult(full.settings, full.environment, list(vs)).to_dict())  # noqa: E731
    (part / "lab.json").write_text(keep(full.variants[0]))
    (part / "shards" / "gated-seed1.json").write_text(keep(full.variants[3]))
    logged = []
    again = run_lab(s, part, log=logged.append)
    assert sum("already done" in line for line in logged) == 2
    assert [v.to_dict() for v in again.variants][0] == full.variants[0].to_dict()  # kept, not retrained
    strip = lambda r: [{k: v for k, v in x.to_dict().items() if k != "seconds"} for x in r.variants]  # noqa: E731
    assert strip(again) == strip(full) and not (part / "shards").exists()


# --- sinkhole mask ------------------------------------------------------------------------------------

# Low rules so that the tiny random model has spike and sink tokens; 3 texts a batch (15 batches). One
# thread in every process: MKL's sgemm rounds differently with 1 and 2 threads for a few matrix shapes
# (5-7 and 9-11 rows, which short texts make; docs/interp.md), and the default thread count of one
# process differs from a rank's share of the cores.
MASK_ARGS = ["--threshold", "1.2", "--epsilon", "0.1", "--min-sink-rate", "0.3", "--max-batch", "3"]
MASK_ARGS += ["--threads", "1"]


@pytest.fixture(scope="module")
def mask_job(job):
    """The one-process mask of the job's 40 texts (one spike and one sink at least)."""
    from sinkhole.cli.main import main
    from sinkhole.mask.store import load_mask

    base = ["mask", "--model", str(job["model"]), "--texts", str(job["root"] / "prompts.txt"), *MASK_ARGS]
    ref = job["root"] / "mask-one.npz"
    assert main([*base, "--out", str(ref)]) == 0
    f = load_mask(ref)
    assert len(f) == 40 and f.arrays["spike"].any() and f.arrays["sink"].any()
    return {"base": base, "ref": ref}


def test_mask_under_two_ranks_writes_what_one_process_writes(mask_job, tmp_path):
    from sinkhole.mask.store import parts_dir

    out = tmp_path / "two.npz"
    code, stdout, stderr = launched(2, [*mask_job["base"], "--npz", str(out)])
    assert code == 0, stderr[-3000:]
    assert out.read_bytes() == mask_job["ref"].read_bytes() and not parts_dir(out).exists()
    assert stderr.count("loading ") == 1 and stderr.count(f"wrote {out}: 40 texts") == 1  # rank 0 speaks


def _wait_for_parts(parts: Path, n: int, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(parts.glob("batch-*.npz"))) >= n:
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError("no parts appeared")


def test_mask_killed_with_2_ranks_resumes_with_3_and_with_1(mask_job, tmp_path):
    from sinkhole.cli.main import main
    from sinkhole.mask.store import parts_dir

    out, pids = tmp_path / "m.npz", tmp_path / "pids"
    pids.mkdir()
    env = {"SINKHOLE_TEST_DELAY": "0.5", "SINKHOLE_TEST_PIDS": str(pids)}
    proc = torchrun(2, [*mask_job["base"], "--npz", str(out)], env, driver=True)
    _wait_for_parts(parts_dir(out), 3, proc)
    os.kill(int((pids / "rank-1").read_text()), signal.SIGKILL)
    code, _, stderr = finish(proc, timeout=120)
    assert code != 0 and "sinkhole: rank 0 of 2 stopped by the launcher" in stderr, stderr[-3000:]
    assert not out.exists()
    done = len(list(parts_dir(out).glob("batch-*.npz")))
    assert 3 <= done < 15
    # a second kill part way through the 3-rank resume, then one process finishes
    env = {"SINKHOLE_TEST_DELAY": "0.5"}
    proc = torchrun(3, [*mask_job["base"], "--npz", str(out)], env, driver=True, start_new_session=True)
    _wait_for_parts(parts_dir(out), done + 1, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # every process of the job
    finish(proc, timeout=60)
    assert not out.exists()
    assert main([*mask_job["base"], "--npz", str(out)]) == 0
    assert out.read_bytes() == mask_job["ref"].read_bytes() and not parts_dir(out).exists()


def test_mask_rank_that_disagrees_stops_before_the_model_loads(mask_job, tmp_path):
    from sinkhole.mask.store import parts_dir

    out = tmp_path / "m.npz"
    env = {"SINKHOLE_TEST_RANK_ARGS": json.dumps({"1": ["--max-batch", "4"]})}
    code, stdout, stderr = finish(torchrun(2, [*mask_job["base"], "--npz", str(out)], env, driver=True))
    errors = [ln for ln in stderr.splitlines() if ln.startswith("sinkhole: error:")]
    assert code != 0 and len(errors) == 1, stderr[-3000:]
    assert "rank 1 of 2 disagrees with rank 0 on the settings (batching" in errors[0]
    assert "loading " not in stderr and not parts_dir(out).exists() and not out.exists() and stdout == ""


@pytest.mark.integration
def test_two_ranks_equal_one_process_smollm2(tmp_path):
    from sinkhole.cli.main import main

    args = ["eval", "--model", "smollm2-135m", "--prompts", "builtin", "--limit", "6", "--no-figures"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    code, _, stderr = launched(2, [*args, "--out", str(tmp_path / "two")])
    assert code == 0, stderr[-3000:]
    same_outputs(tmp_path / "one", tmp_path / "two")
