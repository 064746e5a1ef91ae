"""The fused CPU softmax + column-sum step of the exact attention path (`csrc/softmax_colsum.c`).

`softmax_colsum(...)` is the one entry point: it turns a block of float32 scores into probabilities
in place and adds their column sums (and the learned sinks' share) into the caller's accumulators,
or returns False when no kernel is available, and the caller runs the same step in torch ops.

Why a C file and not an extension: it is one function with plain pointers, so it builds in well
under a second with whatever C compiler the machine has (`$CC`, cc, gcc, clang), with no torch
headers and no build tool, and loads through ctypes, which releases the GIL during the call (the
threaded path's workers run their blocks concurrently). It does in one pass, each row in L1, what
takes torch several passes over the block (measured: docs/attention.md).

The shared library is cached under `cache_dir()/kernels/`, named by a hash of the source, the
compiler's flags and this CPU's model and flags (it is built with -march=native, so a cache shared
between machines never hands one a library built for another). Before first use it must match the
torch ops on a small problem with masked rows, sinks and weights; a build failure or a mismatch is
reported once as a warning and the torch ops run. `SINKHOLE_CPU_KERNEL=0` turns it off (benchmarks,
debugging); no compiler at all is silent: the torch path is the documented fallback.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from importlib import resources
from pathlib import Path

import torch

SOURCE = "softmax_colsum.c"
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp-simd"],
    ["-O3", "-fopenmp-simd"],  # compilers or CPUs without -march=native
    ["-O3"],
)
_LOCK = threading.Lock()
_STATE: dict = {}  # "fn": the ctypes function, or None once it is known there is none


def _cpu_signature() -> str:
    """The CPU's model and feature flags (Linux), or what platform knows elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags", "Features")]
        return "\n".join(dict.fromkeys(keep))
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(cc: str, source: bytes, target: Path) -> list[str]:
    """Compile `source` into `target` with the first flag set the compiler accepts; returns the errors."""
    errors = []
    with tempfile.TemporaryDirectory(prefix="sinkhole-kernel-") as tmp:
        src = Path(tmp) / SOURCE
        src.write_bytes(source)
        for flags in FLAG_SETS:
            out = Path(tmp) / "k.so"
            proc = subprocess.run(
                [cc, *flags, "-fPIC", "-shared", "-o", str(out), str(src), "-lm"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if proc.returncode == 0:
                target.parent.mkdir(parents=True, exist_ok=True)
                staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                shutil.copyfile(out, staged)
                os.replace(staged, target)  # atomic: a concurrent process never loads a partial file
                return []
            errors.append(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    return errors


def _load():
    """The checked ctypes function, or None (no compiler, build failure, mismatch, or turned off)."""
    if os.environ.get("SINKHOLE_CPU_KERNEL", "1") == "0" or platform.system() == "Windows":
        return None
    cc = _compiler()
    if cc is None:
        return None
    from sinkhole.io import cache_dir

    source = resources.files("sinkhole.probe").joinpath("csrc").joinpath(SOURCE).read_bytes()
    key = hashlib.sha256(b"\0".join([source, repr(FLAG_SETS).encode(), cc.encode(), _cpu_signature().encode()]))
    target = cache_dir() / "kernels" / f"softmax_colsum-{key.hexdigest()[:20]}.so"
    try:
        if not target.exists():
            errors = _build(cc, source, target)
            if errors:
                _warn(f"could not build the CPU attention kernel with {cc} ({errors[-1]})")
                return None
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        _warn(f"could not build or load the CPU attention kernel ({type(exc).__name__}: {exc})")
        return None
    fn = lib.sinkhole_softmax_colsum
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [ptr, i64, i64, i64, i64, ptr, i64, ptr, i64, ptr, i64, ptr]
    fn.restype = None
    if not _self_check(fn):
        _warn("the CPU attention kernel disagreed with torch on its self-check")
        return None
    return fn


def _warn(what: str) -> None:
    warnings.warn(f"sinkhole: {what}; using torch ops for the attention statistics (slower)", stacklevel=4)


def kernel():
    """The ctypes function, built and checked on first use (thread-safe), or None."""
    if "fn" not in _STATE:
        with _LOCK:
            if "fn" not in _STATE:
                _STATE["fn"] = _load()
    return _STATE["fn"]


@contextlib.contextmanager
def turned_off():
    """The torch ops for the duration of the block (benchmarks compare both in one process)."""
    fn = kernel()
    _STATE["fn"] = None
    try:
        yield
    finally:
        _STATE["fn"] = fn


def softmax_colsum(
    scores: torch.Tensor,
    colsum: torch.Tensor,
    causal_base: int | None,
    valid: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    sink_mass: torch.Tensor | None = None,
    fn=None,
) -> bool:
    """Softmax of `scores` in place and its column sums added to `colsum`; False if no kernel ran.

    Args:
        scores: (B, Hkv, G, tb, L) float32, contiguous, on the CPU: one query block's scores, masks
            already applied (-inf = hidden) except the causal one, which `causal_base` gives: row t
            sees keys [0, causal_base + t + 1); None = every key of the block.
        colsum: (B, Hkv, G, Tk) float32 contiguous with Tk >= L; gains sum_t valid[b, t] * P[..., t, :].
        valid: (B, tb) float32 contiguous row weights (0 = padding) or None.
        sinks: (Hkv * G,) float32 contiguous learned sink logits or None; then sink_mass
            ((B, Hkv, G) float64 contiguous) gains each head's weighted sink probability.
    Rows with no visible key become zeros and take no sink mass.
    """
    fn = fn or kernel()
    if fn is None:
        return False
    B, Hkv, G, tb, L = scores.shape
    heads = B * Hkv * G
    assert scores.is_contiguous() and scores.dtype == torch.float32 and colsum.is_contiguous()
    fn(
        scores.data_ptr(),
        heads,
        tb,
        L,
        -1 if causal_base is None else causal_base,
        colsum.data_ptr(),
        colsum.shape[-1],
        None if valid is None else valid.data_ptr(),
        Hkv * G,
        None if sinks is None else sinks.data_ptr(),
        Hkv * G,
        None if sink_mass is None else sink_mass.data_ptr(),
    )
    return True


def torch_softmax_colsum(
    scores, colsum, causal_base, valid=None, sinks=None, sink_mass=None, dead=None, out=None
) -> torch.Tensor:
    """The same step in torch ops, on any device: the kernel's specification (its self-check and tests)
    and the path where no kernel runs. Arguments as `softmax_colsum`; returns the probabilities (in
    `out`, a float32 buffer of at least scores.numel() elements, when given) and may overwrite scores.

    dead: (B|1, Hkv|1, G|1, tb, 1) bool, the rows with no visible key, when the caller can tell them
    cheaply (from its mask; none under a plain causal mask); None = find them in the scores."""
    B, Hkv, G, tb, L = scores.shape
    if causal_base is not None and causal_base < L:
        # Only the block's diagonal square holds keys later than some of its rows.
        hidden = torch.ones(tb, L - causal_base, dtype=torch.bool, device=scores.device).triu_(1)
        scores[..., causal_base:].masked_fill_(hidden, float("-inf"))
    if dead is None:
        dead = torch.isneginf(scores).all(dim=-1, keepdim=True)
    dead = dead if dead is not None and dead.any() else None
    if dead is not None:
        scores.masked_fill_(dead, 0.0)  # they would softmax to NaN
    if sinks is not None:
        sink = sinks.float().reshape(1, Hkv, G, 1, 1).expand(B, Hkv, G, tb, 1)
        p_all = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)
        p, p_sink = p_all[..., :-1], p_all[..., -1]  # (B, Hkv, G, tb)
        if dead is not None:
            p_sink = p_sink.masked_fill(dead[..., 0], 0.0)
        if valid is not None:
            p_sink = p_sink * valid[:, None, None, :]
        sink_mass += p_sink.sum(dim=-1).to(sink_mass.dtype)
    elif out is None:
        p = torch.softmax(scores, dim=-1)
    else:
        p = torch.ops.aten._softmax.out(scores, -1, False, out=out[: scores.numel()].view(scores.shape))
    if dead is not None:
        p.masked_fill_(dead, 0.0)
    w = p if valid is None else p * valid[:, None, None, :, None]
    colsum[..., :L] += w.sum(dim=-2)
    return p


def reference_softmax_colsum(scores, *args, **kwargs) -> None:
    """`torch_softmax_colsum` in place, as the kernel works (self-check, tests)."""
    scores.copy_(torch_softmax_colsum(scores, *args, **kwargs))


def _self_check(fn) -> bool:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 2, 3, 5, 37, generator=g) * 6
    scores[0, :, :, 1] = float("-inf")  # a fully masked row
    scores[1, 1, :, :, 30:] = float("-inf")
    valid = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 0, 1]], dtype=torch.float32)
    sinks = torch.randn(6, generator=g)
    results = []
    for run in (lambda *a: softmax_colsum(*a, fn=fn), reference_softmax_colsum):
        s, c, m = scores.clone(), torch.zeros(2, 2, 3, 40), torch.zeros(2, 2, 3, dtype=torch.float64)
        run(s, c, 29, valid, sinks, m)
        results.append((s, c, m))
    (s1, c1, m1), (s2, c2, m2) = results
    return (
        torch.allclose(s1, s2, rtol=1e-5, atol=1e-7)
        and torch.allclose(c1, c2, rtol=1e-5, atol=1e-6)
        and torch.allclose(m1, m2, rtol=1e-5, atol=1e-7)
    )
