"""Golden outputs: run every command that writes JSON or prints a report, then compare two such runs.

A restructure must leave every written file and every printed report byte-identical. This script runs
each command on the bundled SmolLM2 with small settings and one thread (the thread count changes the last
bits) with the code tree at ROOT, and saves stdout, stderr and every written file under OUT/<step>/;
`diff` compares two such directories. About 8 minutes of one CPU core for a run.

    python benchmarks/golden.py run /path/to/old-checkout runs/golden-old     # e.g. a `git worktree`
    python benchmarks/golden.py run . runs/golden-new
    python benchmarks/golden.py diff runs/golden-old runs/golden-new          # exit 1 on a difference
    python benchmarks/golden.py run . runs/g --steps stream,recall            # some steps only

diff: JSON byte for byte; when the bytes differ it lists the differing keys and accepts a difference only
in VOLATILE (wall time, RSS, dates: the keys two runs of one tree disagree on); stdout exactly after
masking the timing columns in MASKS; other files byte for byte (.npz by its arrays: zip member times
vary); stderr after dropping progress lines (a warning, not a failure). Inputs are written to
OUT/_inputs and named by relative paths, since eval and compare record a path as given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "Explain the theory of relativity in simple terms."
SUITE = [
    ("What is the capital of France?", "factual"),
    ("Name three primary colors.", "factual"),
    ("Write a haiku about the sea.", "creative"),
    ("Tell a very short story about a cat.", "creative"),
    ("def add(a, b):\n    return", "code"),
]
INPUTS = {
    "suite.jsonl": "".join(json.dumps({"prompt": p, "category": c}) + "\n" for p, c in SUITE),
    "texts.txt": "The cat sat on the mat.\nAttention sinks absorb attention mass at the first token.\n"
    "import numpy as np\nQuantization error grows with outliers.\n",
    "prompts.txt": "Why is the sky blue?\nList two prime numbers.\n",
    "prompt_b.txt": "Summarize the plot of Hamlet in two sentences.\n",
}
M = "--model smollm2-135m --threads 1"
IN = "../_inputs"
CALIB = "--calib-seqs 2 --calib-len 64"
MAKE_RUN = f"--prompt {shlex.quote(PROMPT)} --output report.html --json report.json"
# (step, sinkhole arguments), run in this order: compare reads run/ and analyze/, compare-eval eval*/
STEPS = [
    ("run", f"analyze --threads 1 {MAKE_RUN}"),  # the Makefile's `run` target, one thread
    ("analyze", f"analyze {M} --prompt-file {IN}/prompt_b.txt --no-chat --threshold 8 --output page.html --json -"),
    ("analyze-gemma", f"analyze --model gemma3-270m --threads 1 {MAKE_RUN}"),
    ("compare", "compare ../run/report.json ../analyze/stdout --json compare.json --output compare.html"),
    ("mechanism", f"mechanism {M} --prompts {IN}/prompts.txt --text-tokens 128 --json mech.json --output mech.html"),
    ("vocab-sweep", f"vocab-sweep {M} --sample 256 --batch-size 128 --list 5 --json sweep.json"),
    ("eval", f"eval {M} --prompts {IN}/suite.jsonl --out run --csv rows_copy.csv"),
    ("eval2", f"eval {M} --prompts {IN}/suite.jsonl --limit 4 --threshold 20 --out run --no-figures"),
    ("compare-eval", "compare ../eval/run ../eval2/run/summary.json --json compare.json --output compare.html"),
    ("profile", f"profile {M} --prompts {IN}/suite.jsonl --stream-prompts 1 --stream-window 64 --json profile.json"),
    ("profile-show", f"profile --show {IN}/profile.json"),
    (
        "stream",
        f"stream {M} --tokens 96 --cache 32 --samples 2 --profile {IN}/profile.json --json stream.json "
        "--plot stream.png",
    ),
    (
        "recall",
        f"stream {M} --recall --tokens 528 --seeds 1 --random-seeds 1 --window 48 --local-sinks 8 "
        f"--profile {IN}/profile.json --json recall.json",
    ),
    (
        "quant",
        f"quant {M} {CALIB} --validate --heldout-seqs 1 --heldout-len 64 --backend smoothquant "
        "--hints act_scales.pt --stats-json stats.json --json validate.json",
    ),
    ("quant-llmc", f"quant {M} {CALIB} --alpha 0.5 --backend llm-compressor --hints recipe.yaml"),
    ("quant-bnb", f"quant {M} {CALIB} --backend bitsandbytes --hints bnb.json"),
    ("quant-torchao", f"quant {M} --profile {IN}/profile.json --backend torchao --hints torchao.json"),
    ("quant-prefix", f"quant {M} {CALIB} --backend prefix"),
    (
        "kv-bench",
        f"kv-bench {M} --tasks passkey --lengths 384 --seeds 1 --random-seeds 1 --window 48 "
        f"--local-sinks 8 --chunk 128 --profile {IN}/profile.json --json kv.json --output kv.html",
    ),
    ("mask", f"mask {M} --texts {IN}/texts.txt --npz mask.npz"),
    (
        "lab",
        "lab --threads 1 --variants baseline,gated --seeds 0,1 --steps 30 --checkpoints 2 --layers 2 "
        "--d-model 32 --out run",
    ),
    ("models", "models --json models.json"),
]

# (step, file) -> key paths (list indices as []; * one key) that two runs of one tree disagree on
VOLATILE = {
    ("vocab-sweep", "sweep.json"): {".seconds", ".tokens_per_second"},
    ("stream", "stream.json"): {".methods.*.seconds"},
    ("recall", "recall.json"): {".rows[].seconds", ".rows[].detail.seeds[].seconds"},
    ("kv-bench", "kv.json"): {".cells[].seconds", ".cells[].peak_rss", ".summary.methods.*.seconds"},
    ("lab", "run/lab.json"): {".environment.started", ".variants[].seconds"},
}
# (step, file) -> regexes (multiline) masked in printed text: the timing columns
MASKS = {
    ("vocab-sweep", "stdout"): [r"\d+(\.\d+)? s, \d+ tokens/s"],
    ("kv-bench", "stdout"): [r"(?<=%) +\d+$"],
    ("kv-bench", "kv.html"): [r"(?<=%) +\d+$"],
    ("recall", "stdout"): [r"(?<=\d\.\d{3}x) +\d+(\.\d+)?(?= )"],
    ("lab", "stdout"): [r" +\d+s$"],
    ("lab", "run/lab.html"): [r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", r">\d+s</td>"],
}
# stderr: which progress lines are printed depends on timing; the other lines carry seconds
PROGRESS = r"^.*: \d+/\d+ \S+ \(\d+%\).*\n"
STDERR_MASKS = [r"\d+(\.\d+)? s\b", r"~\d+ s left"]


def run(root: Path, out: Path, steps: list[str], profile: Path) -> int:
    """Run the steps with PYTHONPATH=root; each in out/<step>/ (emptied first); returns failed steps."""
    (out / "_inputs").mkdir(parents=True, exist_ok=True)
    for name, text in INPUTS.items():
        (out / "_inputs" / name).write_text(text, encoding="utf-8")
    (out / "_inputs" / "profile.json").write_bytes(profile.read_bytes())
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false"}
    failed = 0
    for name, args in STEPS:
        if name not in steps:
            continue
        d = out / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "sinkhole", *shlex.split(args)], cwd=d, env=env, capture_output=True)
        for stream, data in (("stdout", p.stdout), ("stderr", p.stderr)):
            text = data.decode("utf-8", "replace").replace(str(root), "<ROOT>").replace(str(out), "<OUT>")
            (d / stream).write_text(text, encoding="utf-8")
        (d / "rc").write_text(f"{p.returncode}\n")
        failed += p.returncode != 0
        print(f"{name:14s} rc={p.returncode}  {time.monotonic() - t0:.0f} s", flush=True)
    return failed


def flatten(x, path: str = "") -> dict[str, str]:
    """JSON -> {key path: leaf as JSON text}; a dict's key order is a leaf too (it is part of the bytes)."""
    if isinstance(x, dict):
        out = {path + "{}": json.dumps(list(x))}
        for k, v in x.items():
            out.update(flatten(v, f"{path}.{k}"))
        return out
    if isinstance(x, list):
        out = {path + "#len": str(len(x))}
        for i, v in enumerate(x):
            out.update(flatten(v, f"{path}[{i}]"))
        return out
    return {path: json.dumps(x)}  # type-strict: 1 and 1.0 differ


def is_volatile(path: str, patterns: set[str]) -> bool:
    norm = re.sub(r"\[\d+\]", "[]", path)
    return any(re.fullmatch(re.escape(p).replace(r"\*", r"[^.\[]+"), norm) for p in patterns)


def diff_json(a: Path, b: Path, key: tuple[str, str]) -> tuple[list[str], set[str]]:
    """(differing key paths with both values, volatile paths that differ) of two JSON / JSONL files."""

    def docs(p: Path) -> dict[str, str]:
        lines = p.read_text(encoding="utf-8").splitlines() if p.suffix == ".jsonl" else [p.read_text("utf-8")]
        flat: dict[str, str] = {}
        for i, line in enumerate(x for x in lines if x.strip()):
            flat.update(flatten(json.loads(line), f"<{i}>" if p.suffix == ".jsonl" else ""))
        return flat

    fa, fb = docs(a), docs(b)
    bad, ignored = [], set()
    for k in sorted(fa.keys() | fb.keys()):
        va, vb = fa.get(k, "<missing>"), fb.get(k, "<missing>")
        if va == vb:
            continue
        if is_volatile(k, VOLATILE.get(key, set())):
            ignored.add(re.sub(r"\[\d+\]", "[]", k))
        else:
            bad.append(f"    {k}: {va[:80]} != {vb[:80]}")
    if not bad and not ignored:
        bad.append("    same parsed JSON, different bytes (formatting)")
    return bad, ignored


def masked(text: str, patterns: list[str]) -> str:
    for p in patterns:
        text = re.sub(p, "<T>", text, flags=re.M)
    return text


def first_difference(ta: str, tb: str) -> str:
    la, lb = ta.splitlines(), tb.splitlines()
    for i in range(max(len(la), len(lb))):
        x, y = (la[i] if i < len(la) else "<EOF>"), (lb[i] if i < len(lb) else "<EOF>")
        if x != y:
            return f"line {i + 1}:\n    A: {x[:200]}\n    B: {y[:200]}"
    return "?"


def same_arrays(a: Path, b: Path) -> bool:
    import numpy as np

    with np.load(a) as x, np.load(b) as y:
        return x.files == y.files and all(x[k].dtype == y[k].dtype and (x[k] == y[k]).all() for k in x.files)


def compare_file(step: str, rel: str, a: Path, b: Path) -> tuple[str | None, str | None]:
    """(problem, note) for one file present in both runs whose bytes differ."""
    key = (step, rel)
    if rel == "rc":
        return f"{step}: exit status {a.read_text().strip()} != {b.read_text().strip()}", None
    if rel == "stderr":
        ta, tb = (masked(re.sub(PROGRESS, "", p.read_text(), flags=re.M), STDERR_MASKS) for p in (a, b))
        return None, (f"WARNING {step}/stderr differs at {first_difference(ta, tb)}" if ta != tb else None)
    if rel.endswith((".json", ".jsonl")) or (rel == "stdout" and a.read_text().lstrip().startswith("{")):
        try:
            bad, ignored = diff_json(a, b, key)
        except ValueError as err:
            return f"{step}/{rel}: not JSON-readable ({err})", None
        if bad:
            return f"{step}/{rel}: JSON differs in {len(bad)} key(s):\n" + "\n".join(bad[:40]), None
        return None, f"{step}/{rel}: only volatile keys differ ({', '.join(sorted(ignored))})"
    if rel.endswith(".npz"):
        ok = same_arrays(a, b)
        return (None, f"{step}/{rel}: same arrays") if ok else (f"{step}/{rel}: arrays differ", None)
    if key in MASKS:
        ta, tb = (masked(p.read_text(encoding="utf-8"), MASKS[key]) for p in (a, b))
        if ta == tb:
            return None, f"{step}/{rel}: only masked timing fields differ"
        return f"{step}/{rel} differs at {first_difference(ta, tb)}", None
    if rel == "stdout":
        return f"{step}/stdout differs at {first_difference(a.read_text(), b.read_text())}", None
    return f"{step}/{rel}: bytes differ ({a.stat().st_size} vs {b.stat().st_size} bytes)", None


def diff(dir_a: Path, dir_b: Path) -> int:
    """Print every difference between two runs; 0 when they agree but for the volatile fields."""
    problems, notes, agree = [], [], []
    steps = sorted({p.name for d in (dir_a, dir_b) for p in d.iterdir() if p.is_dir()})
    for step in steps:
        sa, sb = dir_a / step, dir_b / step
        if not (sa.is_dir() and sb.is_dir()):
            problems.append(f"{step}: only in {'A' if sa.is_dir() else 'B'}")
            continue
        fa, fb = ({str(p.relative_to(s)) for p in s.rglob("*") if p.is_file()} for s in (sa, sb))
        before = len(problems)
        problems += [f"{step}/{rel}: only in {'A' if rel in fa else 'B'}" for rel in sorted(fa ^ fb)]
        for rel in sorted(fa & fb):
            if (sa / rel).read_bytes() != (sb / rel).read_bytes():
                problem, note = compare_file(step, rel, sa / rel, sb / rel)
                problems += [problem] if problem else []
                notes += [note] if note else []
        if len(problems) == before:
            agree.append(step)
    print(f"A = {dir_a}\nB = {dir_b}\nagree ({len(agree)}): {' '.join(agree)}")
    print("".join(f"note: {n}\n" for n in notes) + "".join(f"DIFF: {p}\n" for p in problems), end="")
    print("RESULT:", f"{len(problems)} difference(s)" if problems else "IDENTICAL (but for volatile fields)")
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the commands with the code tree at ROOT into OUT")
    r.add_argument("root", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--steps", default=",".join(s for s, _ in STEPS), help="comma-separated (default: all)")
    r.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="sink profile file for stream, recall, quant and kv-bench (default: ROOT's shipped smollm2-135m profile)",
    )
    d = sub.add_parser("diff", help="compare two run directories")
    d.add_argument("a", type=Path)
    d.add_argument("b", type=Path)
    args = ap.parse_args()
    if args.cmd == "diff":
        return diff(args.a, args.b)
    root, out = args.root.resolve(), args.out.resolve()
    profile = args.profile or root / "sinkhole" / "data" / "profiles" / "smollm2-135m.json"
    return 1 if run(root, out, args.steps.split(","), profile) else 0


if __name__ == "__main__":
    sys.exit(main())
