"""sinkhole: spike tokens (massive activations) and attention sinks in causal LMs, measured.

    from sinkhole import ModelProbe, analyze
    probe = ModelProbe("smollm2-135m", device="cpu")
    capture = probe.run("Explain the theory of relativity in simple terms.")
    report = analyze(capture)          # report.to_dict() is the JSON report

Names are imported lazily so that `import sinkhole` stays cheap.
"""

import os as _os

__version__ = "0.1.0"

# Offline by default for the library, not only the CLI: huggingface_hub reads this once, at its
# import. load_model() also switches an already imported huggingface_hub to offline mode.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")

_LAZY = {
    "ModelProbe": "sinkhole.probe.probe",
    "Capture": "sinkhole.probe.capture",
    "analyze": "sinkhole.analysis.core",
    "Report": "sinkhole.results.report",
    "load_model": "sinkhole.probe.loading",
    "SinkholeError": "sinkhole.errors",
    "SinkProfile": "sinkhole.profiles.profile",
    "load_profile": "sinkhole.profiles.profile",
    "SinkDetector": "sinkhole.experiments.detector",
    "SinkCache": "sinkhole.cache.sink_cache",
    "get_quantization_hints": "sinkhole.quant.hints",
    "token_mask": "sinkhole.mask.compute",
    "TokenMask": "sinkhole.mask.compute",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sinkhole' has no attribute {name!r}")
