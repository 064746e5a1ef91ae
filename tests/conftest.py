"""Shared fixtures. Unit tests use tiny random-weight models built from a config (nothing is
downloaded); tests marked `integration` load the bundled real models once per session."""

from __future__ import annotations

import os

# Triton fixes its mode when it is first imported (by whichever test or library gets there first):
# set the interpreter before anything imports it, so the fused-path tests run on the CPU. Set
# TRITON_INTERPRET=0 to test the compiled kernels on a GPU.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from sinkhole.probe.support import IdTokenizer  # noqa: E402,F401  (tests import it from here)


def benchmark_script(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is scripts, not a package), for tests of its parts."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    cfg.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    return model


def tiny_gemma3(seed: int = 0, **overrides):
    """Sandwich norm, QK-norm, a sliding-window layer (window 4) and a global one."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=256,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
    )
    cfg.update(overrides)
    return Gemma3ForCausalLM(Gemma3TextConfig(**cfg)).eval()


def wrap(model, name="tiny"):
    from sinkhole.probe.loading import LoadedModel

    return LoadedModel.wrap(model, IdTokenizer(), name=name)


@pytest.fixture
def tiny_llama_model():
    return tiny_llama()


@pytest.fixture(params=["llama", "gemma3"])
def tiny_model(request):
    return tiny_llama() if request.param == "llama" else tiny_gemma3()


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M-Instruct as a LoadedModel (converted once into the user cache)."""
    from sinkhole.probe.loading import load_model

    return load_model("smollm2-135m", log=lambda m: None)


@pytest.fixture(scope="session")
def gemma3():
    from sinkhole.probe.loading import load_model

    return load_model("gemma3-270m", log=lambda m: None)


def bare_profile(streaming: dict | None = None, model: dict | None = None):
    """A profile with one pinned slot and nothing else measured, but `streaming` (and `model`)."""
    from sinkhole.profiles.profile import SinkProfile

    return SinkProfile(
        model=model or {"name": "t"},
        sink_rule={"positions": [0]},
        sink_tokens=[],
        spike_channels=[],
        step_up_layers=[],
        step_down_layers=[],
        sink_heads=[],
        pinned_slots=1,
        prompts={},
        streaming=streaming,
    )
