"""attention_with_stats against SDPA and a brute-force softmax: outputs, column sums, maps."""

import pytest
import torch

from sinkhole.probe import cpu_kernel
from sinkhole.probe.attention import attention_with_stats


@pytest.fixture(autouse=True, params=["c_kernel", "torch_ops"])
def cpu_step(request):
    """Every test here runs with both CPU implementations of the softmax + column-sum step."""
    if request.param == "torch_ops":
        with cpu_kernel.turned_off():
            yield request.param
        return
    if cpu_kernel.kernel() is None:
        pytest.skip("no C compiler here, so no CPU kernel (tests/test_cpu_kernel.py checks when there must be one)")
    yield request.param


def brute(q, k, v, allowed, scaling, softcap=None, sinks=None):
    """Full (B, Hq, Tq, Tk) probabilities the slow way, with keys repeated for GQA."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    s = (q @ k.transpose(-1, -2)) * scaling
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    s = s.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        s = torch.cat([s, sinks.reshape(1, -1, 1, 1).expand(*s.shape[:3], 1)], -1)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    p = p[..., :-1] if sinks is not None else p
    return p, (p @ v).transpose(1, 2)


def causal(Tq, Tk):
    return torch.arange(Tk)[None, :] <= torch.arange(Tk - Tq, Tk)[:, None]


@pytest.mark.parametrize("block_bytes", [1, 700, 1 << 30])  # one row per block, a few rows, all at once
@pytest.mark.parametrize("hq,hkv", [(4, 2), (4, 4), (6, 1)])
def test_matches_sdpa_and_brute_force_causal(block_bytes, hq, hkv):
    torch.manual_seed(0)
    B, T, D = 2, 13, 8
    q, k, v = torch.randn(B, hq, T, D), torch.randn(B, hkv, T, D), torch.randn(B, hkv, T, D)
    out, colsum, probs, _ = attention_with_stats(q, k, v, None, D**-0.5, block_bytes=block_bytes, keep_probs=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert out.shape == (B, T, hq, D)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-5, rtol=1e-5)
    p, _ = brute(q, k, v, causal(T, T), D**-0.5)
    torch.testing.assert_close(colsum, p.sum(-2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs.float(), p, atol=1e-3, rtol=1e-3)


def test_bool_and_float_masks_with_padding_and_query_validity():
    torch.manual_seed(1)
    B, H, T, D = 2, 4, 9, 8
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, 2, T, D), torch.randn(B, 2, T, D)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :3] = False  # left padding on sequence 1
    allowed = causal(T, T)[None, None] & valid[:, None, None, :]
    float_mask = torch.zeros(B, 1, T, T).masked_fill(~allowed, torch.finfo(torch.float32).min)
    p, ref_out = brute(q, k, v, allowed, 0.3)
    ref_col = (p * valid[:, None, :, None]).sum(-2)
    for mask in (allowed, float_mask):
        out, colsum, _, _ = attention_with_stats(q, k, v, mask, 0.3, query_valid=valid, block_bytes=500)
        torch.testing.assert_close(colsum, ref_col, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[0], ref_out[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1, 3:], ref_out[1, 3:], atol=1e-5, rtol=1e-5)
    assert colsum[1, :, :3].abs().max() == 0  # padded keys receive nothing


@pytest.mark.parametrize("block_bytes", [300, 1 << 30])
def test_per_head_masks_with_gqa(block_bytes):
    """A mask with a head axis (B, Hq, Tq, Tk): each query head keeps its own, also when its KV head is shared."""
    torch.manual_seed(4)
    B, Hq, Hkv, T, D = 2, 6, 2, 11, 8
    q, k, v = torch.randn(B, Hq, T, D), torch.randn(B, Hkv, T, D), torch.randn(B, Hkv, T, D)
    allowed = causal(T, T)[None, None] & (torch.rand(B, Hq, T, T) < 0.7)
    allowed |= torch.eye(T, dtype=torch.bool)  # every row sees itself
    p, ref_out = brute(q, k, v, allowed, 0.3)
    out, colsum, probs, _ = attention_with_stats(q, k, v, allowed, 0.3, block_bytes=block_bytes, keep_probs=True)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(colsum, p.sum(-2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs.float(), p, atol=1e-3, rtol=1e-3)


def test_sliding_window_mask_decode_offset_softcap_and_sinks():
    torch.manual_seed(2)
    B, H, Tq, Tk, D = 1, 2, 3, 10, 4  # decoding: 3 queries at the end of 10 keys
    q, k, v = torch.randn(B, H, Tq, D), torch.randn(B, H, Tk, D), torch.randn(B, H, Tk, D)
    rows = torch.arange(Tk - Tq, Tk)[:, None]
    cols = torch.arange(Tk)[None, :]
    window = (cols <= rows) & (cols > rows - 4)
    sinks = torch.tensor([0.5, -1.0])
    p, ref = brute(q, k, v, window, 0.5, softcap=2.0, sinks=sinks)
    out, colsum, _, _ = attention_with_stats(q, k, v, window[None, None], 0.5, softcap=2.0, sinks=sinks, block_bytes=1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(colsum, p.sum(-2), atol=1e-5, rtol=1e-5)
    # mask None with an offset means plain causal relative to the end
    p2, ref2 = brute(q, k, v, causal(Tq, Tk), 0.5)
    out2, col2, _, _ = attention_with_stats(q, k, v, None, 0.5, block_bytes=1)
    torch.testing.assert_close(out2, ref2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(col2, p2.sum(-2), atol=1e-5, rtol=1e-5)


def test_sink_mass_with_padding_and_dead_rows():
    """Learned sinks (gpt-oss): the sink's probability per row, summed over valid rows; padding rows add none."""
    torch.manual_seed(3)
    B, H, T, D = 2, 4, 9, 8
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, 2, T, D), torch.randn(B, 2, T, D)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :3] = False
    allowed = causal(T, T)[None, None] & valid[:, None, None, :]
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    s = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * 0.3
    s = torch.cat([s.masked_fill(~allowed, float("-inf")), sinks.reshape(1, -1, 1, 1).expand(B, H, T, 1)], -1)
    ref = (torch.softmax(s, -1)[..., -1] * valid[:, None, :]).sum(-1)
    for block_bytes in (1, 1 << 30):
        _, colsum, _, sink_mass = attention_with_stats(
            q, k, v, allowed, 0.3, sinks=sinks, query_valid=valid, block_bytes=block_bytes
        )
        torch.testing.assert_close(sink_mass, ref, atol=1e-5, rtol=1e-5)
        # every valid row's probability is shared between keys and the sink
        torch.testing.assert_close(colsum.sum(-1) + sink_mass, valid.sum(-1, keepdim=True).float().expand(B, H))
    assert attention_with_stats(q, k, v, None, 0.3)[3] is None


@pytest.mark.parametrize("case", ["causal", "padded_mask_sinks", "bidirectional", "decode"])
def test_threaded_row_slices_equal_one_call(case):
    """The multi-threaded CPU path (row slices in Python threads) gives the single call's numbers."""
    from sinkhole.probe.exact_attention import exact_attention_with_stats, threaded_exact_attention_with_stats

    torch.manual_seed(4)
    B, H, T, D = 2, 4, 23, 8
    Tq = 5 if case == "decode" else T
    q, k, v = torch.randn(B, H, Tq, D), torch.randn(B, 2, T, D), torch.randn(B, 2, T, 6)
    kw = dict(block_bytes=400)
    mask, causal_model = None, True
    if case == "padded_mask_sinks":
        valid = torch.ones(B, T, dtype=torch.bool)
        valid[1, :4] = False
        mask = causal(T, T)[None, None] & valid[:, None, None, :]
        kw.update(query_valid=valid, sinks=torch.tensor([0.5, -1.0, 2.0, 0.0]), softcap=3.0)
    elif case == "bidirectional":
        mask, causal_model = torch.ones(1, 1, T, T, dtype=torch.bool), False
    before = torch.get_num_threads()
    got = threaded_exact_attention_with_stats(q, k, v, mask, 0.3, 3, causal=causal_model, **kw)
    assert torch.get_num_threads() == 3  # what the caller's torch was set to, restored
    torch.set_num_threads(before)
    ref = exact_attention_with_stats(q, k, v, mask, 0.3, causal=causal_model, **kw)
    for name, a, b in zip(("out", "colsum", "probs", "sink_mass"), got, ref):
        if b is None:
            assert a is None, name
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
