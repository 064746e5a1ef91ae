"""The loss plan: each KV head's measured loss delta (`sinkhole.kvbench.head_loss`) and the exact
knapsack that spends the budget by it (`head_plan.plan_by_loss`, `rank_by="loss"`). Tiny random
models (tests/conftest.py)."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from conftest import bare_profile, tiny_gemma3, tiny_llama, wrap

from sinkhole.cache.head_aware import HeadAwareSinkCache, head_aware_attention
from sinkhole.cache.head_plan import LOSS_STEPS, plan_by_loss, reach_layers, shuffle_states
from sinkhole.errors import SinkholeError
from sinkhole.kvbench.head_loss import measure_loss_scores, single_head
from sinkhole.long_tasks import Sample
from sinkhole.profiles.profile import load_profile


def brute_force(loss, costs, room):
    """The least summed loss of any assignment whose extra memory over streaming fits `room`."""
    stream_c, select_c, whole_c = costs
    heads = [(layer, h) for layer, row in enumerate(loss["stream"]) for h in range(len(row))]
    best = None
    for states in itertools.product(("stream", "select", "whole"), repeat=len(heads)):
        extra, total = 0.0, 0.0
        for (layer, h), s in zip(heads, states):
            extra += {"stream": 0, "select": select_c[layer], "whole": whole_c[layer]}[s] - stream_c[layer]
            total += {"stream": loss["stream"][layer][h], "select": loss["select"][layer][h], "whole": 0.0}[s]
        if extra <= room + 1e-9 and (best is None or total < best - 1e-12):
            best = total
    return best


def summed(loss, states):
    return sum(
        {"stream": loss["stream"][layer][h], "select": loss["select"][layer][h], "whole": 0.0}[s]
        for layer, row in enumerate(states)
        for h, s in enumerate(row)
    )


@pytest.mark.parametrize("seed", range(6))
def test_the_knapsack_finds_the_least_loss_brute_force_finds(seed):
    rng = random.Random(seed)
    L, H = 3, 2
    step = 7.0  # costs in whole steps of room / LOSS_STEPS, so rounding up changes nothing
    room = step * LOSS_STEPS
    stream_c = [rng.randrange(1, 50) * step for _ in range(L)]
    select_c = [s + rng.randrange(100, 900) * step for s in stream_c]
    whole_c = [s + rng.randrange(900, 1600) * step for s in select_c]
    loss = {
        "stream": [[rng.uniform(0, 1) for _ in range(H)] for _ in range(L)],
        "select": [[rng.uniform(0, 0.5) for _ in range(H)] for _ in range(L)],
    }
    states = plan_by_loss(loss, (stream_c, select_c, whole_c), room)
    extra = sum(
        {"stream": 0, "select": select_c[layer], "whole": whole_c[layer]}[s] - stream_c[layer]
        for layer, row in enumerate(states)
        for s in row
    )
    assert extra <= room
    assert summed(loss, states) == pytest.approx(brute_force(loss, (stream_c, select_c, whole_c), room))


def test_one_whole_head_that_loses_most_beats_two_selections():
    """The case the loss plan is for (Gemma-3's layer 11): the room pays for one head whole or two
    selecting; the head whose selection loses most goes whole, the others stream."""
    loss = {"stream": [[0.30], [0.05], [0.04]], "select": [[0.20], [0.01], [0.01]]}
    states = plan_by_loss(loss, ([10, 10, 10], [60, 60, 60], [110, 110, 110]), room=100)
    assert states == [["whole"], ["stream"], ["stream"]]
    # without a selecting state: whole or stream
    states = plan_by_loss({"stream": loss["stream"], "select": None}, ([10, 10, 10], None, [60, 60, 60]), room=100)
    assert sorted(s for row in states for s in row) == ["stream", "whole", "whole"] and states[2] == ["stream"]


def test_rounding_up_never_passes_the_budget():
    loss = {"stream": [[1.0, 1.0]], "select": [[0.5, 0.5]]}
    room = 1000.0
    # each selection costs just over half the room: only one fits, though 2 x 500.3 rounds near 1000
    states = plan_by_loss(loss, ([0.0], [500.3], [2000.0]), room)
    assert sorted(states[0]) == ["select", "stream"]


def test_no_room_keeps_every_head_streaming():
    loss = {"stream": [[1.0, 1.0]], "select": [[0.5, 0.5]]}
    assert plan_by_loss(loss, ([0.0], [3.0], [9.0]), room=0.0) == [["stream", "stream"]]


def test_reach_keeps_a_global_head_from_streaming_however_little_it_seems_to_lose():
    """Gemma-3's layer 17: streaming it alone cost nothing on calibration text, and the plan that
    streamed it lost held-out needles. With reach its head selects, and the room left goes by loss."""
    loss = {"stream": [[0.30], [0.05], [0.0]], "select": [[0.20], [0.01], [0.0]]}
    costs = ([10, 10, 10], [60, 60, 60], [110, 110, 110])
    assert plan_by_loss(loss, costs, room=100) == [["whole"], ["stream"], ["stream"]]
    reach = [False, False, True]
    assert plan_by_loss(loss, costs, room=100, reach=reach) == [["select"], ["stream"], ["select"]]
    assert plan_by_loss(loss, costs, room=160, reach=reach) == [["whole"], ["stream"], ["select"]]
    # a budget that cannot hold the reach is refused, in one line
    for room in (49.0, 0.0):
        with pytest.raises(SinkholeError, match="global layer") as err:
            plan_by_loss(loss, costs, room=room, reach=reach)
        assert "\n" not in str(err.value)


def test_reach_is_the_global_layers_of_a_model_with_sliding_ones_and_a_selection():
    assert reach_layers(["sliding", "global", "sliding"], with_select=True) == [False, True, False]
    assert reach_layers(["sliding", "global"], with_select=False) is None  # whole would be the only floor
    assert reach_layers(["global", "global"], with_select=True) is None  # no windows to reach past


def test_the_loss_plan_on_a_sliding_model_never_streams_its_global_head():
    model = tiny_gemma3()  # layer 0 sliding (window 4), layer 1 global; one KV head each
    # the global head loses nothing alone, so without reach it would stream
    prof = loss_profile(model, [[0.3], [0.0]], [[0.1], [0.0]])
    n = 120
    kwargs = dict(model=model, length=n, window=2, local_sinks=0, n_sink=1, rank_by="loss")
    selecting = HeadAwareSinkCache.from_profile(prof, budget=0.6, select=0.3, prompt_length=n - 10, **kwargs)
    plan = selecting.memory_plan
    assert plan.retrieval[1] == [0] and plan.kv_bytes <= 0.6 * plan.dense_bytes
    # no selection: reach does not apply (the global head would have to be whole), so it streams
    plain = HeadAwareSinkCache.from_profile(prof, budget=0.6, **kwargs).memory_plan
    assert plain.retrieval[1] == []
    with pytest.raises(SinkholeError, match="global layer"):
        HeadAwareSinkCache.from_profile(prof, budget=0.1, select=0.3, prompt_length=n - 10, **kwargs)


def test_shuffled_states_keep_each_kind_s_counts():
    states = [["whole", "stream"], ["select", "stream"], ["stream", "select"]]
    kinds = ["sliding", "global", "global"]
    out = shuffle_states(states, kinds, seed=3)
    for kind in set(kinds):
        before = sorted(s for layer, row in enumerate(states) if kinds[layer] == kind for s in row)
        assert sorted(s for layer, row in enumerate(out) if kinds[layer] == kind for s in row) == before


def loss_profile(model, stream, select):
    H, L = model.config.num_key_value_heads, model.config.num_hidden_layers
    return bare_profile(
        {
            "n_sink": 2,
            "window": 8,
            "scores": [[0.5] * H for _ in range(L)],
            "loss": {"stream": stream, "select": select},
        }
    )


@pytest.mark.parametrize("n", [61, 203])
def test_the_loss_plan_holds_within_the_budget_in_bytes(n):
    model = tiny_llama()
    prof = loss_profile(model, [[0.3, 0.01], [0.02, 0.2]], [[0.1, 0.0], [0.0, 0.05]])
    prompt = n - 10
    cache = HeadAwareSinkCache.from_profile(
        prof, model=model, budget=0.6, length=n, window=8, local_sinks=4, n_sink=2, rank_by="loss",
        select=0.3, prompt_length=prompt,
    )  # fmt: skip
    plan = cache.memory_plan
    assert plan.rank_by == "loss" and plan.kv_bytes <= 0.6 * plan.dense_bytes
    ids = torch.randint(1, 99, (1, n), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), head_aware_attention(model):
        model(ids[:, :prompt], cache=cache, use_cache=True)
        for t in range(prompt, n):
            model(ids[:, t : t + 1], cache=cache, use_cache=True)
    assert cache.kv_bytes() == plan.kv_bytes <= 0.6 * plan.dense_bytes
    # the heads that lose most when compressed are the ones kept (whole or selecting)
    kept = {(layer, h) for layer, row in enumerate(plan.retrieval) for h in row}
    kept |= {(layer, h) for layer, row in enumerate(plan.whole or []) for h in row}
    assert (0, 0) in kept and (1, 1) in kept and (0, 1) not in kept
    json.dumps(plan.to_dict())


def test_a_profile_without_loss_deltas_is_a_one_line_error():
    model = tiny_llama()
    prof = bare_profile({"n_sink": 2, "window": 8, "scores": [[0.5, 0.5], [0.5, 0.5]]})
    with pytest.raises(SinkholeError, match="needs the profile's measured loss deltas") as err:
        HeadAwareSinkCache.from_profile(prof, model=model, length=64, window=8, rank_by="loss")
    assert "\n" not in str(err.value)
    wrong = loss_profile(model, [[0.1, 0.1, 0.1]] * 2, None)
    with pytest.raises(SinkholeError, match="loss deltas .stream. are 2 layers x 3 heads; the model has 2 x 2"):
        HeadAwareSinkCache.from_profile(wrong, model=model, length=64, window=8, rank_by="loss")


def test_single_head_compresses_one_head_and_keeps_the_rest():
    retrieval, whole = single_head(3, 2, 1, 0, "select")
    assert retrieval == [[], [0], []] and whole == [[0, 1], [1], [0, 1]]
    retrieval, whole = single_head(3, 2, 2, 1, "stream")
    assert retrieval == [[], [], []] and whole == [[0, 1], [0, 1], [0]]


def samples(n, count=2, scored=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        Sample("ppl", n, None, i, torch.randint(1, 99, (n,), generator=g).tolist(),
               torch.randint(1, 99, (scored,), generator=g).tolist(), -1)
        for i in range(count)
    ]  # fmt: skip


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_a_window_that_holds_everything_loses_nothing(make):
    """Sinks + window wider than the sample: streaming keeps every key, so each delta is 0 exactly (the
    cache's exactness), and a narrow window loses somewhere."""
    lm = wrap(make())
    wide = measure_loss_scores(lm, samples(40), window=64, select=None, local_sinks=0, n_sink=2, chunk=16)
    assert wide["select"] is None and wide["samples"] == 2 and wide["length"] == 40
    assert all(v == 0.0 for row in wide["stream"] for v in row)
    narrow = measure_loss_scores(lm, samples(40), window=4, select=0.3, local_sinks=0, n_sink=1, chunk=16)
    global_layer = 1 if make is tiny_gemma3 else 0
    assert any(v != 0.0 for v in narrow["stream"][global_layer])
    assert len(narrow["select"]) == len(narrow["stream"]) == 2


def test_the_profile_file_keeps_the_loss_section(tmp_path):
    model = tiny_llama()
    prof = loss_profile(model, [[0.3, -0.01], [0.02, 0.2]], [[0.1, 0.0], [0.0, 0.05]])
    path = tmp_path / "p.json"
    prof.save(path)
    back = load_profile(path)
    assert back.streaming["loss"]["stream"] == [[0.3, -0.01], [0.02, 0.2]]
    data = json.loads(path.read_text())
    data["streaming"]["loss"]["stream"] = [["x"]]
    path.write_text(json.dumps(data))
    with pytest.raises(SinkholeError, match="streaming.loss.stream"):
        load_profile(path)


def test_kv_bench_plans_by_measured_loss(tmp_path, capsys):
    """End to end on a tiny byte-level model: the deltas measured on calibration samples go into the
    profile, and kv-bench --rank-by loss runs head-aware and its random control within the budget."""
    from test_kvbench import save_byte_model
    from transformers import AutoTokenizer

    from sinkhole.cli.main import main
    from sinkhole.kvbench.head_loss import loss_samples
    from sinkhole.probe.loading import load_model

    d = save_byte_model(tmp_path / "tinybyte")
    lm = load_model(str(d), log=lambda m: None)
    calib = loss_samples(AutoTokenizer.from_pretrained(d), 256, 2)
    assert [s.seed for s in calib] == [0, 1] and all(len(s.ids) == 256 for s in calib)
    loss = measure_loss_scores(lm, calib, window=48, select=0.3, local_sinks=8, n_sink=2, chunk=64)
    prof = json.loads((d / "profile.json").read_text())
    argv = ["kv-bench", "--model", str(d), "--profile", str(d / "profile.json"), "--threads", "1"]
    argv += ["--tasks", "ppl", "--lengths", "512", "--seeds", "1", "--window", "48", "--local-sinks", "8"]
    argv += ["--chunk", "128", "--snap-window", "16", "--methods", "dense,head_aware,random", "--select", "0.3"]
    argv += ["--rank-by", "loss", "--random-seeds", "2"]
    capsys.readouterr()
    assert main([*argv, "--json", str(tmp_path / "none.json")]) == 2  # no deltas in the profile yet
    err = capsys.readouterr().err.strip()
    assert "needs the profile's measured loss deltas" in err and len(err.splitlines()) == 1
    prof["streaming"]["loss"] = loss
    (d / "profile.json").write_text(json.dumps(prof))
    out = tmp_path / "kv.json"
    assert main([*argv, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["settings"]["numbers"]["plan"]["rank_by"] == "loss"
    cells = [c for c in doc["cells"] if c["method"] != "dense"]
    assert len(cells) == 3 and all(c["kv_share"] <= 0.5 for c in cells)
    assert main([*argv, "--select-fill", "--json", str(tmp_path / "fill.json")]) == 2
    assert "drop --select-fill" in capsys.readouterr().err


def test_the_profile_text_names_the_heads_that_lose_most():
    from sinkhole.render.profile_text import render_profile

    prof = loss_profile(tiny_llama(), [[0.3, -0.01], [0.02, 0.2]], [[0.1, 0.0], [0.0, 0.05]])
    prof.streaming["loss"]["dense_nll"] = 2.5
    text = render_profile(prof)
    assert "loss delta stream  (nats, that head alone, dense 2.500)  most: L0H0 +0.300, L1H1 +0.200" in text
    assert "loss delta select  (nats, that head alone, dense 2.500)  most: L0H0 +0.100, L1H1 +0.050" in text


def test_answer_deltas_count_beside_the_text_s():
    """A head whose compression costs the text nothing but loses the needle's answer is kept: the plan
    adds the `answers` deltas (calibration needle prompts) to the text's."""
    costs = ([10, 10, 10], [60, 60, 60], [110, 110, 110])
    text = {"stream": [[0.30], [0.05], [0.04]], "select": [[0.20], [0.01], [0.01]]}
    assert plan_by_loss(text, costs, room=100) == [["whole"], ["stream"], ["stream"]]
    answers = {"stream": [[0.0], [0.0], [2.0]], "select": [[0.0], [0.0], [0.0]]}
    assert plan_by_loss({**text, "answers": answers}, costs, room=100) == [["select"], ["stream"], ["select"]]


def test_the_profile_checks_the_answer_deltas(tmp_path):
    model = tiny_llama()
    prof = loss_profile(model, [[0.3, -0.01], [0.02, 0.2]], None)
    prof.streaming["loss"]["answers"] = {"stream": [[1.0, 0.0], [0.0, 0.5]], "select": None, "dense_nll": 0.1}
    from sinkhole.render.profile_text import render_profile

    assert "answers loss delta stream  (nats, that head alone, dense 0.100)  most: L0H0 +1.000" in render_profile(prof)
    path = tmp_path / "p.json"
    prof.save(path)
    assert load_profile(path).streaming["loss"]["answers"]["stream"] == [[1.0, 0.0], [0.0, 0.5]]
    data = json.loads(path.read_text())
    data["streaming"]["loss"]["answers"]["stream"] = [[1.0, None]]
    path.write_text(json.dumps(data))
    with pytest.raises(SinkholeError, match="streaming.loss.answers.stream"):
        load_profile(path)
    prof.streaming["loss"]["answers"]["stream"] = [[1.0, 0.0, 0.0]] * 2
    with pytest.raises(SinkholeError, match="answers loss deltas .stream. are 2 layers x 3 heads"):
        HeadAwareSinkCache.from_profile(prof, model=model, length=64, window=8, rank_by="loss")
