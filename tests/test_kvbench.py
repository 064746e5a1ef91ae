"""kv-bench: task generators, the SnapKV-style cache against a brute-force selection, byte budgets."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from sinkhole.errors import SinkholeError
from sinkhole.long_tasks import PPL_TOKENS, SEED_BASE, TASKS, Encoder, grid_depths, make_samples, occurrences


class CharTokenizer:
    """One id per character (ids 3..98, so a tiny model's 99-token vocabulary holds them), BOS = 1."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [3 + ord(c) % 96 for c in text]}


@pytest.fixture(scope="module")
def enc():
    return Encoder(CharTokenizer())


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [700, 1031])
def test_answer_once_where_stated(enc, task, length):
    samples = make_samples(enc, task, length, depths=3, seeds=2)
    assert len(samples) == (6 if task == "niah" else 2)
    for s in samples:
        assert len(s.ids) == length and s.ids[0] == 1 and s.seed >= SEED_BASE
        if task == "ppl":
            assert s.where == -1 and len(s.answer) == PPL_TOKENS and s.depth is None
            continue
        assert occurrences(s.ids, s.answer) == [s.where]  # exactly once, at the stated place
        assert 0 <= s.depth <= 1


@pytest.mark.parametrize("task", TASKS)
def test_generators_seeded(enc, task):
    a = make_samples(enc, task, 900, depths=2, seeds=2)
    b = make_samples(enc, task, 900, depths=2, seeds=2)
    assert a == b  # deterministic
    assert a[0].ids != a[-1].ids  # another seed (or depth) is another prompt


def test_niah_depth_moves_the_needle(enc):
    samples = make_samples(enc, "niah", 600, depths=5, seeds=1)
    assert [s.depth for s in samples] == grid_depths(5) == [0, 0.25, 0.5, 0.75, 1.0]
    wheres = [s.where for s in samples]
    assert wheres == sorted(wheres) and wheres[0] < 120 and wheres[-1] > 480


def test_occurrences_finds_every_copy():
    assert occurrences([1, 2, 3, 1, 2, 1, 2], [1, 2]) == [0, 3, 5]
    assert occurrences([1, 2], [2, 3]) == []


def test_unknown_task_and_short_length(enc):
    with pytest.raises(SinkholeError, match="unknown task"):
        make_samples(enc, "nope", 900)
    with pytest.raises(SinkholeError, match="cannot hold"):
        make_samples(enc, "multikey", 120)
    for task in ("ppl", "passkey"):  # longer than the haystack: one line, not randrange's ValueError
        with pytest.raises(SinkholeError, match="the haystack has"):
            make_samples(enc, task, len(enc.haystack) + 1000, seeds=1)


# -- the SnapKV-style cache ----------------------------------------------------------------------


def brute_force_keep(model, ids, window, capacity, kernel):
    """Per layer, the (B, H) sets of kept positions from eager attention maps, by explicit loops."""
    from sinkhole.probe.hooks import attention_implementation

    with attention_implementation(model, "eager"), torch.inference_mode():
        maps = model(ids, output_attentions=True, use_cache=False).attentions
    N, prefix = ids.shape[1], ids.shape[1] - window
    H = model.config.num_key_value_heads
    G = model.config.num_attention_heads // H
    out = []
    for a in maps:  # (B, Hq, N, N)
        per = []
        for b in range(a.shape[0]):
            row = []
            for h in range(H):
                score = [float(a[b, h * G : (h + 1) * G, N - window :, k].sum(-1).mean()) for k in range(prefix)]
                pooled = []
                for i in range(prefix):
                    near = [score[j] for j in range(i - kernel // 2, i + kernel // 2 + 1) if 0 <= j < prefix]
                    pooled.append(sum(near) / kernel)
                best = sorted(range(prefix), key=lambda i: (-pooled[i], i))[: capacity - window]
                row.append(sorted(best) + list(range(prefix, N)))
            per.append(row)
        out.append(per)
    return out


@pytest.mark.parametrize("kernel", [1, 3])
def test_snapkv_keeps_what_brute_force_picks(kernel):
    from sinkhole.kvbench.snapkv import SnapKVCache, SnapKVLayer, snapkv_attention

    model = tiny_llama(seed=3)
    torch.manual_seed(0)
    ids = torch.randint(3, 99, (2, 48))
    window, capacity = 6, 20
    cache = SnapKVCache(model=model, capacity=capacity, prompt_length=48, window=window, kernel=kernel, max_new=4)
    with snapkv_attention(model), torch.inference_mode():
        model(ids[:, :30], cache=cache, use_cache=True)
        model(ids[:, 30:], cache=cache, use_cache=True)
    expected = brute_force_keep(model, ids, window, capacity, kernel)
    layers = [layer for layer in cache.layers if isinstance(layer, SnapKVLayer)]
    assert len(layers) == 2
    for layer, want in zip(layers, expected):
        assert layer.kept_positions().tolist() == want
    # the buffer: capacity + max_new slots per head, nothing else
    per_slot = 2 * ids.shape[0] * model.config.num_key_value_heads * (32 // 4) * 4
    assert cache.kv_bytes() == 2 * (capacity + 4) * per_slot


def test_snapkv_decode_matches_masked_attention():
    """One layer: after compression, decoding equals full attention with each head masked to its kept keys."""
    from sinkhole.kvbench.snapkv import SnapKVCache, snapkv_attention
    from sinkhole.probe.hooks import attention_implementation

    model = tiny_llama(seed=5, num_hidden_layers=1)
    torch.manual_seed(1)
    ids = torch.randint(3, 99, (1, 44))
    P, window, capacity = 40, 4, 14
    cache = SnapKVCache(model=model, capacity=capacity, prompt_length=P, window=window, kernel=3, max_new=4)
    with snapkv_attention(model), torch.inference_mode():
        model(ids[:, : P - window], cache=cache, use_cache=True)
        model(ids[:, P - window : P], cache=cache, use_cache=True)
        got = model(ids[:, P:], cache=cache, use_cache=True).logits  # a 4-token chunk after compression
    kept = cache.layers[0].kept_positions()[0, :, :capacity]  # (H, C)
    T, Hq = ids.shape[1], model.config.num_attention_heads
    G = Hq // kept.shape[0]
    allowed = torch.ones(Hq, T, T, dtype=torch.bool).tril()
    for h in range(Hq):
        row = torch.zeros(T, dtype=torch.bool)
        row[kept[h // G]] = True
        row[P:] = True
        allowed[h, P:] &= row
    mask = torch.zeros(1, Hq, T, T).masked_fill(~allowed, float("-inf"))
    with attention_implementation(model, "eager"), torch.inference_mode():
        want = model(ids, attention_mask=mask, use_cache=False).logits[:, P:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # and it differs from dense attention (the test can fail)
    with torch.inference_mode():
        dense = model(ids, use_cache=False).logits[:, P:]
    assert (dense - got).abs().max() > 1e-3


def test_snapkv_refuses_a_chunk_across_the_prompt_end_and_missing_attention():
    from sinkhole.kvbench.snapkv import SnapKVCache

    model = tiny_llama()
    ids = torch.randint(3, 99, (1, 40))
    cache = SnapKVCache(model=model, capacity=10, prompt_length=30, window=4)
    with pytest.raises(SinkholeError, match="past the prompt's end"), torch.inference_mode():
        model(ids, cache=cache, use_cache=True)
    cache = SnapKVCache(model=model, capacity=10, prompt_length=30, window=4)
    with pytest.raises(SinkholeError, match="snapkv_attention"), torch.inference_mode():
        model(ids[:, :30], cache=cache, use_cache=True)
        model(ids[:, 30:], cache=cache, use_cache=True)


# -- end to end on a tiny model ------------------------------------------------------------------


def save_byte_model(d):
    """A tiny Llama with a byte-level tokenizer (any text encodes) and a profile with streaming scores."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(sorted(alphabet))}}
    tk = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.save_pretrained(d)
    model = tiny_llama(vocab_size=len(vocab), max_position_embeddings=1024)
    model.save_pretrained(d)
    H, L = model.config.num_key_value_heads, model.config.num_hidden_layers
    profile = {
        "schema": "sinkhole.profile/1",
        "model": {"name": str(d), "weights_id": ""},
        "sink_rule": {"positions": [0], "token_texts": [], "description": "test"},
        "sink_tokens": [],
        "spike_channels": [],
        "step_up_layers": [],
        "step_down_layers": [],
        "sink_heads": [],
        "pinned_slots": 1,
        "prompts": {"source": "test", "count": 1},
        "streaming": {
            "n_sink": 2,
            "window": 32,
            "scores": [[0.2 + 0.3 * h + 0.1 * l for h in range(H)] for l in range(L)],
        },
    }
    (d / "profile.json").write_text(json.dumps(profile))
    return d


def test_kv_bench_end_to_end_and_resume(tmp_path, capsys):
    import json

    from sinkhole.cli.main import main

    d = save_byte_model(tmp_path / "tinybyte")
    out, page = tmp_path / "kv.json", tmp_path / "kv.html"
    argv = ["kv-bench", "--model", str(d), "--profile", str(d / "profile.json"), "--threads", "1"]
    argv += ["--tasks", "passkey,niah,ppl", "--lengths", "512,600", "--depths", "2", "--seeds", "1"]
    argv += ["--all-cells"]  # random weights fail every retrieval sample: run them anyway
    argv += ["--window", "48", "--local-sinks", "8", "--chunk", "128", "--snap-window", "16", "--random-seeds", "3"]
    # interrupted after 5 cells: they are kept beside --json, and the run resumes from them
    from sinkhole.kvbench import bench as runmod

    real = runmod.make_cell
    calls = []

    def stop_after_five(*a, **kw):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(a[:3])
        return real(*a, **kw)

    runmod.make_cell = stop_after_five
    try:
        assert main([*argv, "--json", str(out)]) == 130
    finally:
        runmod.make_cell = real
    side = tmp_path / "kv.json.cells.jsonl"
    assert len(side.read_text().splitlines()) == 1 + 5 and not out.exists()
    capsys.readouterr()
    assert main([*argv, "--json", str(out), "--output", str(page)]) == 0
    text = capsys.readouterr().out
    assert "512 tokens" in text and "snapkv" in text and "head_aware" in text
    d = json.loads(out.read_text())
    assert not side.exists()
    methods = ["dense", "window", "sinks", "head_aware", "random:0", "random:1", "random:2", "snapkv"]
    assert d["schema"] == "sinkhole.kvbench/1" and d["settings"]["methods"] == methods
    assert len(d["cells"]) == 3 * 2 * 8
    first = [c for c in d["cells"] if (c["task"], c["length"], c["method"]) in {tuple(k) for k in calls}]
    assert len(first) == 5  # the interrupted run's cells were kept, not recomputed
    for c in d["cells"]:
        assert c["kv_bytes"] > 0 and c["peak_rss"] > 0 and c["seconds"] >= 0
        if c["method"] != "dense":  # every method within budget of dense's bytes at the same tokens
            assert c["kv_share"] <= 0.5 + 1e-9, c
        else:
            assert c["kv_share"] == pytest.approx(1.0)
        if c["task"] == "niah":
            assert sorted(s["depth"] for s in c["samples"]) == [0, 1]
    assert set(d["summary"]["methods"]) >= {"dense", "head_aware", "random", "snapkv"}
    html = page.read_text()
    assert html.count("<img") == 2 and "kv-bench" in html
    # the same settings again: nothing to run; other settings: refused with one line
    assert main([*argv, "--json", str(out)]) == 0
    assert main([*argv[:-2], "--random-seeds", "3", "--budget", "0.4", "--json", str(out)]) == 2
    assert "other settings (plan)" in capsys.readouterr().err


def test_kv_bench_skips_the_cells_dense_fails(tmp_path, capsys):
    """Without --all-cells, an exact-match cell that dense fails on every sample runs dense (and SnapKV,
    which shares its prefix) only; ppl always runs every method; the skipped cells are named."""
    import json

    from sinkhole.cli.main import main

    d = save_byte_model(tmp_path / "tinybyte")
    out = tmp_path / "kv.json"
    argv = ["kv-bench", "--model", str(d), "--profile", str(d / "profile.json"), "--threads", "1"]
    argv += ["--tasks", "passkey,ppl", "--lengths", "512", "--seeds", "1", "--window", "48", "--local-sinks", "8"]
    argv += ["--chunk", "128", "--snap-window", "16", "--random-seeds", "1", "--json", str(out)]
    assert main(argv) == 0
    std = capsys.readouterr()
    cells = json.loads(out.read_text())["cells"]
    dense = [c for c in cells if c["task"] == "passkey" and c["method"] == "dense"]
    assert dense and dense[0]["score"] == 0  # random weights cannot find a pass key
    assert {c["method"] for c in cells if c["task"] == "passkey"} == {"dense", "snapkv"}
    assert len([c for c in cells if c["task"] == "ppl"]) == 6  # dense window sinks head_aware random:0 snapkv
    assert "passkey 512: dense failed every sample, 4 other cells skipped" in std.err
    assert "not run (dense failed every sample" in std.out and "passkey 512" in std.out
    # --all-cells runs them from the same store (it decides which cells run, not their numbers)
    assert main([*argv, "--all-cells"]) == 0
    assert len(json.loads(out.read_text())["cells"]) == 12


@pytest.mark.parametrize("which", ["llama", "gemma3"])
@pytest.mark.parametrize("length", [45, 77])
def test_methods_hold_at_most_the_budget(which, length):
    """window, sinks and SnapKV (alone, and from dense's shared prefix) at budget x dense's bytes after a
    prompt and an answer, sliding layers too."""
    from conftest import tiny_gemma3

    from sinkhole.kvbench.bench import run_cells
    from sinkhole.kvbench.methods import Plan, answer_logits, chunks, dense_bytes, kv_bytes_of, make_cache, prefill
    from sinkhole.long_tasks import Sample

    model = tiny_llama() if which == "llama" else tiny_gemma3(sliding_window=16)
    torch.manual_seed(0)
    ids, ans = torch.randint(3, 99, (2, length)), torch.randint(3, 99, (2, 4))
    plan = Plan(budget=0.5, snap_window=4, chunk=16, n_sink=2)
    dense = dense_bytes(model, length + 3) * 2
    held = {}
    for name in ("dense", "window", "sinks", "snapkv"):
        cache, ctx = make_cache(name, model, None, plan, length, 3)
        with ctx(model):
            last = prefill(model, cache, ids, chunks(length, plan.chunk, plan.snap_window))
            logits = answer_logits(model, cache, last, ans)
        assert logits.shape == (2, 4, 99) and torch.isfinite(logits).all()
        held[name] = kv_bytes_of(cache)
    samples = [Sample("niah", length, 0.5, i, ids[i].tolist(), ans[i].tolist(), 0) for i in range(2)]
    shared = {}
    run_cells(model, None, plan, samples, ["dense", "snapkv"], lambda v, lg, c, *_: shared.update({v: kv_bytes_of(c)}))
    held["snapkv (shared prefix)"] = shared["snapkv"]
    for name, b in held.items():
        # dense: transformers' sliding layers keep a view of their last chunk's whole tensor (a few slots more)
        assert b <= (1.1 if name == "dense" else 0.5) * dense, (name, b, dense)
        assert b >= 0.4 * dense, (name, b, dense)  # and not far below: the budget is used


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--tasks", "passkey,nope", "--json", "k.json"], "--tasks: unknown name 'nope'"),
        (["--tasks", "passkey"], "needs --json OUT"),
        (["--lengths", "1024,abc", "--json", "k.json"], "--lengths takes comma-separated"),
        (["--lengths", "100", "--json", "k.json"], "--lengths"),
        (["--lengths", "1024,1024", "--json", "k.json"], "a length twice"),
        (["--depths", "0", "--json", "k.json"], "--depths"),
        (["--budget", "1.5", "--json", "k.json"], "--budget"),
        (["--methods", "dense,dense", "--json", "k.json"], "more than once"),
        (["--json", "/proc/k.json"], "/proc"),
    ],
)
def test_kv_bench_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    from sinkhole.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["kv-bench", "--model", "smollm2-135m", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sinkhole: error:") and message in err[0], err


def test_snapkv_keeps_one_key_count_in_every_layer():
    """SnapKV's capacity is one key count per head for every layer: sliding layers with a shorter
    window keep it whole (as dense), the global heads take what they leave, within the budget."""
    from conftest import tiny_gemma3

    from sinkhole.kvbench.methods import Plan, answer_logits, chunks, dense_bytes, make_cache, prefill, snap_capacity

    kinds = ["sliding_attention"] * 3 + ["full_attention"]
    model = tiny_gemma3(sliding_window=16, num_hidden_layers=4, layer_types=kinds)
    # dense at 203 tokens: 3 x 16 + 203 = 251 slots per head; half is 125: the sliding layers whole hold
    # 3 x (15 + 3) after the answer's 3 tokens, the global head 125 - 54 - 3 = 68 + its 3
    assert snap_capacity(model, 0.5, 203, 3) == (68, 74)
    assert snap_capacity(model, 0.2, 203, 3)[1] < 15  # 50 slots: every layer at one count below 16
    torch.manual_seed(0)
    ids, ans = torch.randint(3, 99, (1, 200)), torch.randint(3, 99, (1, 4))
    plan = Plan(budget=0.5, snap_window=4, chunk=32)
    cache, ctx = make_cache("snapkv", model, None, plan, 200, 3)
    with ctx(model):
        answer_logits(model, cache, prefill(model, cache, ids, chunks(200, plan.chunk, plan.snap_window)), ans)
    # keys held per layer: a sliding layer's keys are a view of its last (15 + 3)-key tensor (its storage
    # counts), the global layer's buffer has its capacity + the 3 answer tokens' slots
    held = [layer.keys.untyped_storage().nbytes() // (8 * 4) for layer in cache.layers]
    assert held == [18, 18, 18, 71]
    assert cache.kv_bytes() <= 0.5 * dense_bytes(model, 203)


def test_kv_bench_select(tmp_path, capsys):
    """--select: head-aware's global retrieval heads keep a share of the prompt; recorded per cell and in
    the settings, within budget; a share outside (0, 1) is one line and exit 2."""
    import json

    from sinkhole.cli.main import main

    d = save_byte_model(tmp_path / "tinybyte")
    out = tmp_path / "kv.json"
    argv = ["kv-bench", "--model", str(d), "--profile", str(d / "profile.json"), "--threads", "1"]
    argv += ["--tasks", "ppl", "--lengths", "512", "--seeds", "1", "--window", "48", "--local-sinks", "8"]
    argv += ["--chunk", "128", "--snap-window", "16", "--methods", "dense,head_aware", "--select", "0.3"]
    assert main([*argv, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["settings"]["numbers"]["plan"]["select"] == 0.3
    (cell,) = [c for c in doc["cells"] if c["method"] == "head_aware"]
    assert cell["detail"]["select"]["capacity"] == round(0.3 * 512) and cell["kv_share"] <= 0.5
    assert cell["detail"]["select"]["window"] == 16
    assert doc["settings"]["numbers"]["plan"]["select_sliding"] is True
    capsys.readouterr()
    # sliding windows kept whole (the rule until Dec 6) is another setting: the same --json refuses it
    assert main([*argv, "--select-global-only", "--json", str(out)]) == 2
    assert "other settings" in capsys.readouterr().err
    bare = [a for a in argv if a not in ("--select", "0.3")]
    assert main([*bare, "--select-global-only", "--json", str(tmp_path / "k3.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "give --select SHARE too" in err and len(err.splitlines()) == 1
    assert main([*argv[:-1], "1.5", "--json", str(tmp_path / "k2.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--select must be" in err and len(err.splitlines()) == 1
    # --select-fill: recorded (another setting), whole heads beside the selecting ones, within budget
    assert main([*argv, "--select-fill", "--json", str(out)]) == 2
    assert "other settings (plan)" in capsys.readouterr().err
    fill = tmp_path / "fill.json"
    assert main([*argv, "--select-fill", "--json", str(fill)]) == 0
    doc = json.loads(fill.read_text())
    assert doc["settings"]["numbers"]["plan"]["select_fill"] is True
    (cell,) = [c for c in doc["cells"] if c["method"] == "head_aware"]
    assert cell["detail"]["whole_heads"] == 0 and cell["kv_share"] <= 0.5  # no whole head fits this tiny model
    assert main([*bare, "--select-fill", "--json", str(tmp_path / "k4.json")]) == 2
    assert "--select-fill changes what --select keeps" in capsys.readouterr().err


def test_kv_bench_seed_base(tmp_path, capsys):
    """--seed-base draws other samples: their seeds start there, the text says so, the records of the
    default base are another setting (refused on resume), and a negative base is one line and exit 2."""
    import json

    from sinkhole.cli.main import main

    d = save_byte_model(tmp_path / "tinybyte")
    argv = ["kv-bench", "--model", str(d), "--profile", str(d / "profile.json"), "--threads", "1"]
    argv += ["--tasks", "passkey,ppl", "--lengths", "512", "--seeds", "2", "--window", "48", "--local-sinks", "8"]
    argv += ["--chunk", "128", "--snap-window", "16", "--methods", "dense,window", "--all-cells"]
    base, held = tmp_path / "kv.json", tmp_path / "held.json"
    assert main([*argv, "--json", str(base)]) == 0
    assert main([*argv, "--seed-base", "2000", "--json", str(held)]) == 0
    out = capsys.readouterr().out
    assert "seeds 2 from 2000" in out
    a, b = json.loads(base.read_text()), json.loads(held.read_text())
    assert "seed_base" not in a["settings"]["numbers"] and a["settings"]["seed_base"] == 1000
    assert b["settings"]["numbers"]["seed_base"] == 2000 == b["settings"]["seed_base"]
    for doc, first in ((a, 1000), (b, 2000)):
        for c in doc["cells"]:
            assert sorted(s["seed"] for s in c["samples"]) == [first, first + 1]
    ppl = {d["settings"]["seed_base"]: [c for c in d["cells"] if c["task"] == "ppl"][0] for d in (a, b)}
    assert ppl[1000]["score"] != ppl[2000]["score"]  # other text, not the same samples relabelled
    assert main([*argv, "--seed-base", "2000", "--json", str(base)]) == 2
    assert "other settings (seed_base)" in capsys.readouterr().err
    assert main([*argv, "--seed-base", "-1", "--json", str(tmp_path / "k.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--seed-base" in err and len(err.splitlines()) == 1
