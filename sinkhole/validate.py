"""One validation layer for every CLI option and public API argument.

Everything a user passes is checked here before any model is loaded, and a bad value raises
`SinkholeError` with one line that says what to give instead:

- numbers: a real number (not a string, not a bool), finite, inside its range; integers are
  integers (2.5 and 10.7 are refused rather than silently truncated);
- the definitions' parameters (sinkhole.analysis.core): threshold >= 1 (a multiple of the median
  token, which itself scores 1: below that, most tokens are "spikes"), epsilon and
  min_sink_rate in (0, 1] (shares of attention and of heads);
- input files: exist, are files, readable;
- output paths: not a directory (or, for a directory output, not a file), in a directory that
  exists or can be created and is writable (probed by creating and removing a file, which also
  catches /proc and read-only mounts), not read-only, not the same file as any input or as
  another output. `-` means stdout where a command allows it.

`validate_args(args)` applies the rules to a parsed CLI namespace by option name, so every
subcommand gets the same checks from the same table (`NUMBERS`, `INPUTS`, `OUTPUTS`).
"""

from __future__ import annotations

import math
import os
import tempfile
from numbers import Integral, Real
from pathlib import Path

from sinkhole.errors import SinkholeError

# -- numbers ---------------------------------------------------------------------------------


def number(
    value,
    name: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
    example=None,
):
    """`value` as a float (or int when `integer`), or a one-line SinkholeError naming `name`'s range."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, Integral) if integer else isinstance(value, Real)
    if isinstance(value, bool) or not ok_type:
        if integer and isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value):
            raise SinkholeError(
                f"{name} must be {kind}{_range(lo, hi, lo_open, hi_open)}, not {value!r}: round it{_eg(example)}"
            )
        raise SinkholeError(
            f"{name} must be {kind}{_range(lo, hi, lo_open, hi_open)}, "
            f"not {type(value).__name__} {value!r}{_eg(example)}"
        )
    if not integer and not math.isfinite(value):
        raise SinkholeError(
            f"{name} must be a finite number{_range(lo, hi, lo_open, hi_open)}, not {value}{_eg(example)}"
        )
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if too_low or too_high:
        shown = value if isinstance(value, Integral) else f"{value:g}"  # 10^12 in full, 0.5 as 0.5
        raise SinkholeError(f"{name} must be{_range(lo, hi, lo_open, hi_open)}, not {shown}{_eg(example)}")
    return int(value) if integer else float(value)


def _range(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'above' if lo_open else 'at least'} {lo:g}"
    if hi is not None:
        return f" {'below' if hi_open else 'at most'} {hi:g}"
    return ""


def _eg(example) -> str:
    return "" if example is None else f" (e.g. {example})"


def integer(value, name: str, lo: int | None = 1, hi: int | None = None, example=None) -> int:
    return number(value, name, lo=lo, hi=hi, integer=True, example=example)


def threshold(value, name: str = "threshold") -> float:
    """Spike threshold: a multiple of the median token's peak norm (the median token scores 1)."""
    return number(value, name, lo=1, example=10)


def share(value, name: str, example=None) -> float:
    """A share of attention or of heads: (0, 1]."""
    return number(value, name, lo=0, hi=1, lo_open=True, example=example)


def analysis_params(
    threshold_: float, epsilon: float, min_sink_rate: float, prefix: str = ""
) -> tuple[float, float, float]:
    """The definitions' three parameters, checked (prefix '--' for CLI spelling)."""
    dash = (lambda s: prefix + s.replace("_", "-")) if prefix else (lambda s: s)
    return (
        threshold(threshold_, dash("threshold")),
        share(epsilon, dash("epsilon"), 0.3),
        share(min_sink_rate, dash("min_sink_rate"), 0.5),
    )


def token_ids(ids, vocab_size: int | None) -> list[int]:
    """A list of token ids, each an integer in [0, vocab_size)."""
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, Integral):
            if hasattr(i, "item") and getattr(i, "ndim", 1) == 0:  # a numpy / torch scalar
                i = i.item()
            if isinstance(i, bool) or not isinstance(i, Integral):
                raise SinkholeError(
                    f"token ids must be integers, not {type(i).__name__} {i!r}: pass a string or a list of ints"
                )
        i = int(i)
        if i < 0 or (vocab_size is not None and i >= vocab_size):
            raise SinkholeError(
                f"token id {i} is outside the vocabulary [0, {vocab_size}): pass ids the tokenizer produced"
            )
        out.append(i)
    return out


# -- paths -----------------------------------------------------------------------------------


def input_file(path, what: str) -> Path:
    """An existing, readable file."""
    if path is None or (isinstance(path, str) and not path.strip()):
        raise SinkholeError(f"{what}: give a file path, not {path!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise SinkholeError(f"{what} must be a file path, not {type(path).__name__} {path!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise SinkholeError(f"{what} not found: {p}")
    if p.is_dir():
        raise SinkholeError(f"{what} {p} is a directory: give a file")
    if not os.access(p, os.R_OK):
        raise SinkholeError(f"{what} {p} is not readable: check its permissions")
    return p


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _nearest_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def output_path(path, what: str, inputs=(), directory: bool = False) -> Path:
    """An output path that can be written (a file, or a directory when `directory`), checked now.

    Creates nothing that stays: writability is probed with a temporary file that is removed."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise SinkholeError(f"{what} must be a path, not {path!r}")
    p = Path(path).expanduser()
    for src in inputs:
        if src is None:
            continue
        src = Path(src).expanduser()
        if _same(p, src):
            raise SinkholeError(
                f"{what} {p} is also an input: writing it would destroy the input; choose another path"
            )
        if src.is_dir() and p.exists() and p.absolute().is_relative_to(src.absolute()):
            raise SinkholeError(
                f"{what} {p} is a file of the input {src}: writing it would destroy the input; choose another path"
            )
    if p.exists():
        if directory and not p.is_dir():
            raise SinkholeError(f"{what} {p} is a file: give a directory (it is created when missing)")
        if not directory and p.is_dir():
            raise SinkholeError(f"{what} {p} is a directory: give a file path inside it, e.g. {p / 'out'}")
        if not directory and not os.stat(p).st_mode & 0o222:
            raise SinkholeError(f"{what} {p} is read-only: choose another path or make it writable")
    anchor = _nearest_existing(p if directory else p.parent)
    if not anchor.is_dir():
        raise SinkholeError(f"{what} {p}: {anchor} is a file, not a directory; choose another path")
    if not os.stat(anchor).st_mode & 0o222:
        raise SinkholeError(f"{what} {p}: directory {anchor} is read-only; choose another path")
    try:  # the real test: /proc, read-only mounts and missing permissions all fail here
        fd, probe = tempfile.mkstemp(prefix=".sinkhole-probe-", dir=anchor)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise SinkholeError(f"{what} {p} cannot be written ({err.strerror or err}): choose another path") from None
    return p


def check_outputs(outputs: dict, inputs=(), directories=(), stdout_ok=()) -> None:
    """Check every output {what: path} against the inputs and against each other."""
    given = [(what, p) for what, p in outputs.items() if p is not None]
    seen: list[tuple[str, Path]] = []
    n_stdout = 0
    for what, p in given:
        if str(p) == "-":
            if what not in stdout_ok:
                raise SinkholeError(f"{what} cannot be '-' (stdout): give a file path")
            n_stdout += 1
            if n_stdout > 1:
                raise SinkholeError("only one output can go to stdout ('-')")
            continue
        path = output_path(p, what, inputs, directory=what in directories)
        for other_what, other in seen:
            if _same(path, other):
                raise SinkholeError(f"{what} and {other_what} are the same file {path}: give each its own path")
        seen.append((what, path))


# -- the CLI table ---------------------------------------------------------------------------

# Upper bounds on counts of work: a typo (10^12) is refused at once instead of hanging. Each is
# far above any useful value: MAX_SEQS sequences are hours of forwards on a CPU (a 1024-token
# streaming prompt takes ~1 s), MAX_STEPS lab steps about 2 hours of one variant.
MAX_SEQS, MAX_STEPS = 1024, 100_000
# `stream --recall`: copy_prompt's layout of 4 spans of 32 tokens (64 tokens of text first, spans
# 64 apart, each copied at least 224 tokens later, 8 to spare) needs 520 tokens plus what the
# tokenizer puts first (a BOS): 8 more allowed for that.
RECALL_MIN_TOKENS = 528

# option dest -> keyword arguments of `number` (integer options have integer=True)
NUMBERS = {
    "threshold": dict(lo=1, example=10),
    "epsilon": dict(lo=0, hi=1, lo_open=True, example=0.3),
    "min_sink_rate": dict(lo=0, hi=1, lo_open=True, example=0.5),
    "threads": dict(lo=1, integer=True, example=1),
    "gpus_per_rank": dict(lo=1, hi=64, integer=True, example=2),
    "limit": dict(lo=1, integer=True, example=100),
    "batch_tokens": dict(lo=1, integer=True, example=4096),
    "max_batch": dict(lo=1, integer=True, example=32),
    "batch_size": dict(lo=1, integer=True, example=1024),
    "sample": dict(lo=1, integer=True, example=20000),
    "list": dict(lo=0, integer=True, example=20),
    "tokens": dict(lo=2, integer=True, example=1024),
    "cache": dict(lo=2, integer=True, example=256),
    "sinks": dict(lo=0, integer=True, example=4),
    "samples": dict(lo=0, integer=True, example=48),
    "text_tokens": dict(lo=16, integer=True, example=1024),
    "calib_seqs": dict(lo=1, hi=MAX_SEQS, integer=True, example=8),
    "calib_len": dict(lo=2, integer=True, example=256),
    "heldout_seqs": dict(lo=1, hi=MAX_SEQS, integer=True, example=4),
    "heldout_len": dict(lo=2, integer=True, example=512),
    "stream_sinks": dict(lo=0, integer=True, example=4),
    "stream_window": dict(lo=1, integer=True, example=256),
    "stream_prompts": dict(lo=1, hi=MAX_SEQS, integer=True, example=8),
    "budget": dict(lo=0, hi=1, lo_open=True, example=0.5),
    "select": dict(lo=0, hi=1, lo_open=True, hi_open=True, example=0.3),
    "window": dict(lo=1, integer=True, example=256),
    "seeds": dict(lo=1, hi=1000, integer=True, example=2),
    "random_seeds": dict(lo=1, hi=1000, integer=True, example=3),
    "steps": dict(lo=1, hi=MAX_STEPS, integer=True, example=800),
    "seed": dict(lo=0, integer=True, example=0),
    "checkpoints": dict(lo=1, hi=1000, integer=True, example=10),
    "layers": dict(lo=1, hi=64, integer=True, example=1),
    # the probe keeps each token's 8 largest channels (top_k): a narrower model has fewer
    "d_model": dict(lo=8, hi=4096, integer=True, example=32),
    "local_sinks": dict(lo=0, integer=True, example=32),
    "candidates": dict(lo=0, integer=True, example=16),
}
# option dest -> description; files read by the command ('builtin' and shipped names are not files)
INPUTS = {
    "prompt_file": "prompt file",
    "prompts": "prompt suite",
    "text": "text file",
    "calib": "calibration text file",
    "heldout": "held-out text file",
    "profile": "profile file",
    "show": "profile file",
    "texts": "texts file",
}
NAMED = ("builtin",)  # values of input options that are not files
# command -> output options (dest -> flag); directory outputs; outputs that may be '-'
OUTPUTS = {
    "analyze": {"output": "--output", "json": "--json"},
    "mechanism": {"output": "--output", "json": "--json"},
    "vocab-sweep": {"json": "--json"},
    "eval": {"out": "--out", "csv": "--csv"},
    "profile": {"json": "--json"},
    "stream": {"json": "--json", "plot": "--plot"},
    "kv-bench": {"json": "--json", "output": "--output"},
    "quant": {"hints": "--hints", "stats_json": "--stats-json", "json": "--json"},
    "compare": {"output": "--output", "json": "--json"},
    "lab": {"out": "--out"},
    "models": {"json": "--json"},
    "mask": {"out": "--npz"},
}
DIRECTORY_OUTPUTS = {("eval", "out"), ("lab", "out")}
STDOUT_OUTPUTS = {
    ("analyze", "json"),
    ("mechanism", "json"),
    ("vocab-sweep", "json"),
    ("stream", "json"),
    ("quant", "json"),
    ("quant", "stats_json"),
    ("profile", "json"),
    ("compare", "json"),
    ("models", "json"),
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def validate_args(command: str, args) -> None:
    """Check a parsed CLI namespace: numbers, input files, output paths. Nothing is loaded.

    Only the subcommands listed in OUTPUTS are checked: an option name may mean something else in
    a new subcommand, which joins by adding its entry (an empty dict when it writes nothing)."""
    if command not in OUTPUTS:
        return
    for dest, rule in NUMBERS.items():
        value = getattr(args, dest, None)
        if value is not None:
            number(value, _flag(dest), **rule)
    inputs = []
    for dest, what in INPUTS.items():
        value = getattr(args, dest, None)
        if value is None or str(value) in NAMED:
            continue
        if dest in ("profile", "show") and not _looks_like_file(value):
            continue  # a shipped profile's name: load_profile checks it
        inputs.append(input_file(value, what))
    if command == "compare":  # a report, an eval summary, or an eval run directory (its summary.json)
        for side in (args.a, args.b):
            p = Path(str(side)).expanduser()
            inputs.append(input_file(p / "summary.json" if p.is_dir() else p, "compared file"))
    model = getattr(args, "model", None)
    if model and Path(str(model)).expanduser().exists():
        inputs.append(Path(str(model)).expanduser())
    outs = OUTPUTS.get(command, {})
    check_outputs(
        {flag: getattr(args, dest, None) for dest, flag in outs.items()},
        inputs,
        directories={outs[d] for c, d in DIRECTORY_OUTPUTS if c == command},
        stdout_ok={outs[d] for c, d in STDOUT_OUTPUTS if c == command},
    )
    _check_relations(command, args)


def _looks_like_file(value) -> bool:
    s = str(value)
    return Path(s).expanduser().exists() or s.endswith(".json") or os.sep in s


def _check_relations(command: str, args) -> None:
    """Checks that involve two options."""
    if (
        command == "quant"
        and getattr(args, "backend", None)
        and any(str(getattr(args, d, None)) == "-" for d in ("json", "stats_json"))
    ):
        raise SinkholeError("--backend prints the hints on stdout: give --json / --stats-json a file path, not '-'")
    if command == "eval" and args.prompts != "builtin":
        written = {"results.jsonl", "run.json", "summary.json", "summary.html"}  # and PNG figures
        src = Path(args.prompts).expanduser()
        if (src.name in written or src.suffix == ".png") and _same(src.parent, Path(args.out).expanduser()):
            raise SinkholeError(
                f"--prompts {src} is a file that eval writes into --out {args.out}: copy it elsewhere first"
            )
    if command == "stream" and getattr(args, "recall", False):
        # The recall streams hold 4 copied spans of 32 tokens (sinkhole.cache.recall.evaluate_recall's
        # defaults; RECALL_MIN_TOKENS); --cache and --sinks are not used by --recall.
        if args.tokens < RECALL_MIN_TOKENS:
            raise SinkholeError(
                f"--recall streams hold 4 copied spans of 32 tokens: --tokens {args.tokens} is too short, "
                f"use at least {RECALL_MIN_TOKENS} (e.g. --tokens 2048)"
            )
        return
    if command == "stream":
        if args.sinks >= args.cache - 1:
            raise SinkholeError(
                f"--sinks {args.sinks} leaves no window in a cache of {args.cache}: use --sinks below --cache - 1"
            )
        if args.tokens <= args.cache:
            raise SinkholeError(
                f"--tokens {args.tokens} fits in --cache {args.cache}, so nothing is ever evicted and every "
                "method gives dense attention's numbers: stream more tokens than --cache "
                f"(e.g. --tokens {4 * args.cache})"
            )


def names(text, flag: str, choices) -> tuple[str, ...]:
    """A comma-separated list of names from `choices`: at least one, each known, none twice
    (`lab --variants ''` used to run all nine, `baseline,baseline` to train twice)."""
    from sinkhole.errors import did_you_mean

    given = [n.strip() for n in str(text).split(",") if n.strip()]
    if not given:
        raise SinkholeError(f"{flag} names nothing: give one or more of {', '.join(choices)} (comma-separated)")
    for n in given:
        if n not in choices:
            raise SinkholeError(
                f"{flag}: unknown name '{n}'{did_you_mean(n, choices)}; choose from {', '.join(choices)}"
            )
    twice = sorted({n for n in given if given.count(n) > 1})
    if twice:
        raise SinkholeError(f"{flag} names {', '.join(twice)} more than once: each runs once")
    return tuple(given)


# -- the Python API: the CLI's rules under the API's argument names ---------------------------


def like_option(value, name: str, dest: str, optional: bool = False):
    """`value` checked by the rule of the CLI option `dest` (NUMBERS), reported under `name`, the
    API's spelling: `HeadAwareSinkCache.from_profile(budget=nan)` fails as `--budget nan` does."""
    if optional and value is None:
        return None
    return number(value, name, **NUMBERS[dest])


def torch_module(model, what: str):
    """(module, loaded): the torch module of an nn.Module, a LoadedModel or a ModelProbe, and the
    LoadedModel when one was given (it knows its weights id), else None."""
    import torch

    if isinstance(model, torch.nn.Module):
        return model, None
    loaded = getattr(model, "lm", model)  # a ModelProbe holds its LoadedModel as .lm
    module = getattr(loaded, "model", None)
    if not isinstance(module, torch.nn.Module):
        raise SinkholeError(
            f"{what} needs the loaded model (model=lm.model, or the LoadedModel that load_model returns), "
            f"not {type(model).__name__} {model!r:.40}"
        )
    return module, loaded


def profile_for(profile, module, loaded=None):
    """A SinkProfile (or its dict) that is well formed and made for this model, as the CLI requires.

    With a LoadedModel the weights ids are compared (SinkProfile.check_model); with any module, the
    architecture and shape the profile recorded must be the module's (SinkProfile.check_config)."""
    from sinkhole.results.sink_profile import SinkProfile

    if isinstance(profile, dict):
        profile = SinkProfile.from_dict(profile, source="the profile dict")
    elif isinstance(profile, SinkProfile):
        profile.check()
    else:
        raise SinkholeError(
            "profile must be a SinkProfile (load_profile('smollm2-135m') or a profile file) or its dict, "
            f"not {type(profile).__name__} {profile!r:.40}"
        )
    if loaded is not None:
        profile.check_model(getattr(loaded, "weights_id", None), getattr(loaded, "name", None))
    profile.check_config(module.config)
    return profile
