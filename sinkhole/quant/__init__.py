"""Quantization hints from spike statistics: calibration statistics of Linear inputs (`stats`, collected
by `sinkhole.quant.calibration`), hints in real quantizers' config formats (`hints`), and
fake-quantized W8A8 evidence (`fakequant`, `evidence`).

Importing the package is light (the CLI's --help needs the backend registry only); the functions load on use.
"""

from sinkhole.quant.backends import BACKENDS, get_backend  # noqa: F401  (the registry: name -> Backend)

_LAZY = {
    "get_quantization_hints": "sinkhole.quant.hints",
    "write_hints": "sinkhole.quant.hints",
    "collect_stats": "sinkhole.quant.calibration",
    "CalibrationStats": "sinkhole.quant.stats",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
