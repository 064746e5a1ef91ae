"""The dtype rule every command and the Python API share, in a module that imports nothing heavy
(the CLI names the dtype in its first status line, before torch is imported).

float32 on the CPU: exact, so CPU numbers are the reference. Its speed against bfloat16 depends on
the CPU: with native bf16 instructions (AVX512-BF16) bfloat16 ran a vocabulary sweep in 0.53x the
time; a CPU without them was reported 1.55x slower in bfloat16 (BENCHMARKS.md, "Default dtype on
the CPU"); `--dtype bfloat16` remains one flag away. bfloat16 on CUDA, where it is the fast path and
holds massive activations that float16 cannot (Gemma-3's residual reaches 1e5 > 65504)."""

from __future__ import annotations

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def default_dtype(device: str) -> str:
    """The dtype a load uses when none is given: float32 on "cpu", bfloat16 on any CUDA device."""
    return "float32" if device == "cpu" else "bfloat16"
