"""The shortcuts that make HeadAwareSinkCache's chunked prefill cheap keep its numbers: masks built once
per forward and shared by every layer (`kv_stores.ForwardMemo`), the local-sink ring's mask worked
out on (q, N) instead of per batch row and head, and the fused CPU softmax + column sums.
Results only: no timings (benchmarks/head_aware_speed.py measures those)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from sinkhole.cache import kv_stores
from sinkhole.cache.head_aware import HeadAwareSinkCache, attention_and_colsum, head_aware_attention
from sinkhole.cache.kv_stores import ForwardMemo, LocalSinkRing


def visible_per_row(store: LocalSinkRing, n: int, q: int) -> torch.Tensor:
    """(B, H, q, N): what each query sees, worked out per batch row and head from the positions the
    store holds (the definition the shared mask must agree with)."""
    S, M, W = store.S, store.M, store.W
    B, H = store.pos.shape[:2]
    new = torch.arange(n, n + q)
    kpos = torch.cat((store.pos, new.expand(B, H, q)), dim=2)[:, :, None, :]
    kind = torch.cat((torch.tensor([0] * S + [1] * M + [2] * W), torch.where(new < S, 0, 2)))
    t = new[:, None]
    ok = (kpos >= 0) & (kpos <= t)
    if store.sliding is not None:
        ok &= (kind != 1) | (t - kpos < store.sliding)
    return ok & ((kind != 2) | (kpos > t - W))


@pytest.mark.parametrize("S,M,W,sliding", [(2, 3, 5, None), (0, 2, 4, 9), (3, 4, 6, 12)])
def test_shared_ring_mask_equals_the_per_row_mask(S, M, W, sliding):
    """Two layers' rings fed the same positions but different attention (so their local sinks differ
    by row and head) share one memo: each gets the mask its own positions imply, at every chunk."""
    g = torch.Generator().manual_seed(0)
    B, H, D = 2, 3, 4
    stores = [LocalSinkRing(S, M, W, sliding=sliding) for _ in range(2)]
    memo, n = ForwardMemo(), 0
    for q in (1, 3, 7, 2, 8, 1, 1, 5, 9, 4, 6, 3):
        memo.start(n, q)
        for store in stores:
            k, v = torch.randn(B, H, q, D, generator=g), torch.randn(B, H, q, D, generator=g)
            keys, _, mask, observe = store.update(k, v, n, memo)
            if q > 1:
                want = visible_per_row(store, n, q)
                assert torch.equal(mask.expand_as(want), want), (n, q)
            observe(torch.rand(B, H, keys.shape[2], generator=g))
        n += q
    assert any(len(set(store.pos[:, :, S : S + M].flatten().tolist()) - {-1}) > 1 for store in stores)


def test_masks_are_built_once_per_forward(monkeypatch):
    """However many layers, a chunk's causal and ring masks are built once, not once per layer."""
    calls = {"causal": 0, "ring": 0}
    causal, shared_mask = kv_stores.causal_mask, LocalSinkRing._shared_mask

    def counted_causal(*a):
        calls["causal"] += 1
        return causal(*a)

    def counted_ring(self, *a):
        calls["ring"] += 1
        return shared_mask(self, *a)

    monkeypatch.setattr(kv_stores, "causal_mask", counted_causal)
    monkeypatch.setattr(LocalSinkRing, "_shared_mask", counted_ring)
    model = tiny_llama(num_hidden_layers=4, initializer_range=0.3)
    cache = HeadAwareSinkCache([[0], [1], [0], [1]], 2, 6, model=model, local_sinks=2)
    ids = torch.randint(1, 99, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(), head_aware_attention(model):
        for s in range(0, 24, 8):
            model(ids[:, s : s + 8], cache=cache, use_cache=True)
    assert calls == {"causal": 3, "ring": 3}


@pytest.mark.parametrize("T", [1, 6])
def test_fused_softmax_colsum_matches_torch_ops(T):
    """The CPU kernel's one pass and the torch ops give the same attention and column sums."""
    from sinkhole.probe.cpu_kernel import turned_off

    g = torch.Generator().manual_seed(2)
    B, h, G, N, D = 2, 2, 3, 11, 8
    q = torch.randn(B, h, G, T, D, generator=g) * 2
    k, v = torch.randn(B, h, N, D, generator=g), torch.randn(B, h, N, D, generator=g)
    hidden = torch.rand(B, h, T, N, generator=g) > 0.6
    hidden[..., 0] = False  # every row sees a key
    with torch.inference_mode():
        fused = attention_and_colsum(q, k, v, hidden, 0.3)
        with turned_off():
            plain = attention_and_colsum(q, k, v, hidden, 0.3)
    s = torch.einsum("bhgtd,bhnd->bhgtn", q, k) * 0.3
    p = torch.softmax(s.masked_fill(hidden[:, :, None], float("-inf")), -1)
    want = (torch.einsum("bhgtn,bhnd->bhgtd", p, v).reshape(B, h, G * T, D), p.sum((2, 3)))
    for got in (fused, plain):
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
