"""Needle scores: the attention a model's answer puts on the needle it copies, per KV head, and the
rankings of the head-aware cache that use them."""

from __future__ import annotations

import pytest
import torch
from conftest import bare_profile, tiny_gemma3, tiny_llama, wrap

from sinkhole.cache.head_plan import interleave, rank_scores
from sinkhole.errors import SinkholeError
from sinkhole.experiments.head_scores import measure_needle_scores, needle_lengths
from sinkhole.long_tasks import Sample
from sinkhole.profiles.stream_scores import needle_share


def eager_needle(q, k, scaling, rows, span, sliding=None, softcap=None):
    """Brute force: every query head's full causal attention map, then the answer rows' mass on the span."""
    B, Hq, T, D = q.shape
    G = Hq // k.shape[1]
    s = torch.einsum("bhtd,bhkd->bhtk", q, k.repeat_interleave(G, 1)) * scaling
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    t, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    visible = (j <= t) & (True if sliding is None else (t - j < sliding))
    p = torch.softmax(s.masked_fill(~visible, float("-inf")), -1)
    mass = p[:, :, T - rows :, span[0] : span[1]].sum(-1).mean(-1)  # (B, Hq)
    return mass.view(B, k.shape[1], G).amax(-1)


@pytest.mark.parametrize("sliding,softcap", [(None, None), (7, None), (None, 3.0)])
def test_needle_share_matches_eager(sliding, softcap):
    torch.manual_seed(0)
    q, k = torch.randn(2, 6, 30, 8), torch.randn(2, 3, 30, 8)
    got = needle_share(q, k, 0.4, 5, (10, 14), sliding, softcap)
    torch.testing.assert_close(got, eager_needle(q, k, 0.4, 5, (10, 14), sliding, softcap))
    assert got.shape == (2, 3)


def test_needle_share_is_the_best_query_head_of_a_group():
    """One query head of KV head 0 reads the needle: KV head 0 scores near 1, KV head 1 near 0."""
    T, D = 24, 4
    k = torch.zeros(1, 2, T, D)
    k[0, :, 5, 0] = 10.0  # key 5 is the needle in both KV heads
    q = torch.zeros(1, 4, T, D)
    q[0, 1, :, 0] = 5.0  # query head 1 (KV head 0) aims at it; the others attend uniformly
    got = needle_share(q, k, 1.0, 3, (5, 6))[0]
    assert got[0] > 0.99 and got[1] < 0.1
    with pytest.raises(SinkholeError, match="do not group"):
        needle_share(torch.zeros(1, 3, T, D), k, 1.0, 3, (5, 6))


def greedy_sample(model, ids: list[int], n: int, where: int) -> Sample:
    """A sample the model answers: its own greedy continuation, so teacher forcing matches it."""
    out = list(ids)
    with torch.inference_mode():
        for _ in range(n):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return Sample("niah", len(ids), 0.5, 0, list(ids), out[len(ids) :], where)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_measure_needle_scores_keeps_answered_samples(make):
    model = make()
    lm = wrap(model)
    ids = [int(x) for x in torch.randint(3, 90, (60,), generator=torch.Generator().manual_seed(1))]
    good = greedy_sample(model, ids, 3, where=20)
    wrong = Sample("niah", 60, 0.5, 0, ids, [(t + 1) % 99 for t in good.answer], 20)
    res = measure_needle_scores(lm, [good, wrong, good])
    assert res["needle_prompts"] == 2 and res["needle_asked"] == 3
    scores = res["needle_scores"]
    assert len(scores) == model.config.num_hidden_layers and len(scores[0]) == model.config.num_key_value_heads
    assert all(0 <= v <= 1 for row in scores for v in row)
    alone = measure_needle_scores(lm, [good])["needle_scores"]
    assert scores == alone  # the mean over answered samples only: two copies of one sample = that sample
    none = measure_needle_scores(lm, [wrong])
    assert none["needle_scores"] is None and none["needle_prompts"] == 0


def test_needle_lengths_fit_the_context():
    assert needle_lengths(tiny_llama(max_position_embeddings=4096)) == (1024, 2048)
    assert needle_lengths(tiny_llama(max_position_embeddings=1024)) == (512,)  # GPT-2's context: half of it
    assert needle_lengths(tiny_llama()) == ()  # 256 tokens: too short for a needle in a haystack


def stream(needle=None):
    # both ranks head (0, 0) first; the needle puts head (1, 1) first
    st = {
        "n_sink": 4,
        "window": 8,
        "scores": [[0.5, 0.5], [0.5, 0.5]],
        "copy_scores": [[0.1, 0.9], [0.5, 0.6]],
        "retrieval_scores": [[0.9, 0.0], [0.2, 0.1]],
    }
    if needle is not None:
        st["needle_scores"] = needle
    return st


def order(scores):
    return [lh for _, lh in sorted((v, (layer, h)) for layer, row in enumerate(scores) for h, v in enumerate(row))]


def test_rankings_with_needle_scores():
    st = stream([[0.0, 0.2], [0.1, 0.9]])
    assert order(rank_scores(st, "needle")) == [(1, 1), (0, 1), (1, 0), (0, 0)]
    both = order(rank_scores(st, "both"))
    assert both[0] == (0, 0)
    # mix takes turns: the first of each ranking, then the seconds, ...
    mix = order(rank_scores(st, "mix"))
    assert set(mix[:2]) == {(0, 0), (1, 1)}
    # a profile made before the needle scores: mix and needle fall back to both
    assert rank_scores(stream(), "mix") == rank_scores(stream(), "both") == rank_scores(stream(), "needle")


def test_interleave_takes_turns():
    a = [[0.0, 1.0, 2.0, 3.0]]
    b = [[3.0, 2.0, 1.0, 0.0]]
    got = interleave(a, b)[0]
    assert sorted(range(4), key=lambda h: got[h])[:2] in ([0, 3], [3, 0])
    assert all(0 <= v < 1 for v in got)


def test_profile_refuses_bad_needle_scores():
    from sinkhole.results.sink_profile import SinkProfile

    good = bare_profile(stream([[0.0, 0.2], [0.1, 0.9]])).to_dict()
    assert SinkProfile.from_dict(good).streaming["needle_scores"][1][1] == 0.9
    bad = bare_profile(stream([[0.0, 2.0], [0.1, 0.9]])).to_dict()
    with pytest.raises(SinkholeError, match="needle_scores"):
        SinkProfile.from_dict(bad)


def test_needle_prompts_leave_out_what_a_tokenizer_cannot_build():
    from test_kvbench import CharTokenizer

    from sinkhole.experiments.head_scores import needle_prompts

    class NoDigits(CharTokenizer):  # digits have no ids: an answer is a lone space, never unique
        def __call__(self, text, add_special_tokens=True):
            return super().__call__("".join(c for c in text if not c.isdigit()), add_special_tokens)

    got = needle_prompts(CharTokenizer(), (600,))
    assert [s.task for s in got] == ["niah"] * 5 + ["multikey"] * 3 + ["passkey"] * 3
    assert all(s.seed < 3 for s in got)  # calibration seeds, never kv-bench's (1000 and up)
    assert needle_prompts(NoDigits(), (600,)) == []
