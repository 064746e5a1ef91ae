"""SinkAwareLLM: `vllm.LLM` with a bounded, sink-aware KV cache (StreamingLLM inside vLLM).

    from sinkhole.vllm import SinkAwareLLM
    llm = SinkAwareLLM(model="smollm2-135m", window=1020, profile="smollm2-135m", dtype="float32")
    llm.generate(prompts, SamplingParams(max_tokens=20_000))

Everything `vllm.LLM` takes is passed through, plus `profile=` (a shipped profile name, a profile
file from `sinkhole profile`, a SinkProfile, or "detect"), `window=`, `n_sink=` and
`pin_sink_blocks=`. Prefix caching is off unless asked for (`enable_prefix_caching=True`); with it,
the blocks holding sink tokens stay pinned in the cache after their requests finish (at most
`pin_sink_blocks` of them; sinkhole.vllm.spec), so requests sharing a first block keep hitting it
under memory pressure. For a server, `sink_engine_kwargs(...)` gives the same settings as keyword
arguments for `vllm.EngineArgs` / `AsyncEngineArgs` (or `vllm serve --hf-overrides '<json of
hf_overrides>'`).
"""

from __future__ import annotations

from sinkhole.errors import SinkholeError
from sinkhole.vllm.settings import DEFAULT_PIN_BLOCKS, DEFAULT_WINDOW, SinkSettings, resolve_settings

SUPPORTED_VLLM = ((0, 32), (0, 33))  # [from, to): the KV-cache registry and manager API used here


def check_vllm():
    try:
        import vllm
    except ImportError as err:
        raise SinkholeError(
            f"sinkhole.vllm needs vLLM ({err}); on a CPU machine: `make vllm-setup`, then use .venv-vllm/bin/python"
        ) from None
    version = tuple(int(x) for x in vllm.__version__.split(".")[:2] if x.isdigit())
    if not SUPPORTED_VLLM[0] <= version < SUPPORTED_VLLM[1]:
        raise SinkholeError(f"sinkhole.vllm supports vLLM 0.32.x, not {vllm.__version__}")
    return vllm


def default_block_size() -> int:
    """vLLM's own default KV block size on this platform: 128 tokens on CPU, 16 elsewhere."""
    from vllm.platforms import current_platform

    return 128 if current_platform.is_cpu() else 16


def sink_engine_kwargs(
    model,
    *,
    profile=None,
    window: int = DEFAULT_WINDOW,
    n_sink: int | None = None,
    pin_sink_blocks: int = DEFAULT_PIN_BLOCKS,
    **engine_kwargs,
) -> dict:
    """Keyword arguments for `vllm.LLM`, `EngineArgs` or `AsyncEngineArgs` with sinks + window."""
    return _engine_kwargs(model, profile, window, n_sink, pin_sink_blocks, engine_kwargs)[0]


def _engine_kwargs(model, profile, window, n_sink, pin_blocks, engine_kwargs: dict) -> tuple[dict, SinkSettings]:
    check_vllm()
    from sinkhole.vllm.plugin import register

    register()  # this process resolves the architecture too (the plugin covers the others)
    block_size = engine_kwargs.get("block_size") or default_block_size()
    settings = resolve_settings(
        model, profile=profile, window=window, n_sink=n_sink, block_size=block_size, pin_blocks=pin_blocks
    )
    overrides = dict(engine_kwargs.pop("hf_overrides", None) or {})
    if not isinstance(overrides, dict):
        raise SinkholeError("hf_overrides must be a dict with SinkAwareLLM")
    overrides.update(settings.hf_overrides())
    # sinkhole's attention is eager torch code with per-step Python decisions (which blocks, which
    # rotation): CUDA graphs / torch.compile would freeze them, so eager is the default here.
    engine_kwargs.setdefault("enforce_eager", True)
    # Off unless asked for, unlike vLLM: a pinned block outlives its request, which a user reading
    # kv_blocks_in_use (or sizing the pool) should opt into.
    engine_kwargs["enable_prefix_caching"] = bool(engine_kwargs.get("enable_prefix_caching"))
    return dict(engine_kwargs, model=settings.model, hf_overrides=overrides, block_size=block_size), settings


def _llm_class():
    return check_vllm().LLM


class SinkAwareLLM:
    """`vllm.LLM` with sinks + window. Constructed as `vllm.LLM` (a subclass instance is returned)."""

    def __new__(
        cls,
        model=None,
        *,
        profile=None,
        window: int = DEFAULT_WINDOW,
        n_sink: int | None = None,
        pin_sink_blocks: int = DEFAULT_PIN_BLOCKS,
        **kwargs,
    ):
        if model is None:
            model = kwargs.pop("model", None)
        engine_kwargs, settings = _engine_kwargs(model, profile, window, n_sink, pin_sink_blocks, kwargs)
        llm = _subclass()(**engine_kwargs)
        llm.sink_settings = settings
        return llm


_SUB = None


def _subclass():
    """A vllm.LLM subclass (made on first use: vllm is an optional dependency)."""
    global _SUB
    if _SUB is None:
        base = _llm_class()
        _SUB = type("SinkAwareLLM", (base,), {"sink_settings": None, "__module__": __name__})
    return _SUB


def _kv_cache_manager(llm, what: str):
    core = getattr(getattr(llm.llm_engine, "engine_core", None), "engine_core", None)
    if core is None:
        raise SinkholeError(f"{what} needs an in-process engine core: set VLLM_ENABLE_V1_MULTIPROCESSING=0")
    return core.scheduler.kv_cache_manager


def kv_blocks_in_use(llm) -> int:
    """KV blocks held right now (by running requests, and by sink pins), read from an in-process
    engine core (VLLM_ENABLE_V1_MULTIPROCESSING=0); the scheduler's block pool, for dense and sink
    engines alike."""
    pool = _kv_cache_manager(llm, "kv_blocks_in_use").block_pool
    return pool.num_gpu_blocks - 1 - pool.get_num_free_blocks()  # block 0 is vLLM's null block


def pinned_sink_blocks(llm) -> list[int]:
    """Ids of the sink blocks pinned in the prefix cache right now, oldest first (in-process core)."""
    from sinkhole.vllm.spec import SinkWindowManager

    managers = _kv_cache_manager(llm, "pinned_sink_blocks").coordinator.single_type_managers
    return [i for m in managers if isinstance(m, SinkWindowManager) for i in m.pins]


__all__ = ["SinkAwareLLM", "SinkSettings", "kv_blocks_in_use", "pinned_sink_blocks", "sink_engine_kwargs"]
