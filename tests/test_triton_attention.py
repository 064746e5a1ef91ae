"""The fused (CUDA) attention-statistics path, run on the CPU through Triton's interpreter, against
the exact blocked function and eager attention, case by case; and through the whole probe."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels become Python

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
    pytest.skip("needs TRITON_INTERPRET=1 (set before triton was imported)", allow_module_level=True)

from conftest import tiny_gemma3, tiny_llama, wrap  # noqa: E402
from test_attention import brute, causal  # noqa: E402

from sinkhole.probe import triton_attention  # noqa: E402
from sinkhole.probe.attention import attention_with_stats  # noqa: E402
from sinkhole.probe.exact_attention import exact_attention_with_stats  # noqa: E402
from sinkhole.probe.probe import ModelProbe  # noqa: E402
from sinkhole.probe.triton_attention import fused_attention_with_stats  # noqa: E402

TOL = dict(atol=2e-5, rtol=2e-5)


def sink_share(q, k, allowed, scaling, sinks, softcap=None, valid=None):
    """Eager: probability of the sink logit per row, summed over (valid, not fully masked) rows."""
    G = q.shape[1] // k.shape[1]
    s = (q @ k.repeat_interleave(G, 1).transpose(-1, -2)) * scaling
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    s = s.masked_fill(~allowed, float("-inf"))
    s = torch.cat([s, sinks.reshape(1, -1, 1, 1).expand(*s.shape[:3], 1)], -1)
    p = torch.softmax(s, -1)[..., -1] * allowed.any(-1)  # dead rows take nothing
    if valid is not None:
        p = p * valid[:, None, :]
    return p.sum(-1)


def check(q, k, v, mask, allowed, scaling, forward="triton", valid=None, out_rows=None, **kw):
    """Fused vs exact (same dtype) and vs eager in float32: output, colsum, sink mass."""
    out, col, sm = fused_attention_with_stats(q, k, v, mask, scaling, query_valid=valid, forward=forward, **kw)
    e_out, e_col, _, e_sm = exact_attention_with_stats(
        q, k, v, mask, scaling, query_valid=valid, block_bytes=300, **kw
    )
    assert out.dtype == q.dtype and col.dtype == torch.float32 and out.shape == e_out.shape
    half = q.dtype != torch.float32
    torch.testing.assert_close(col, e_col, **(dict(atol=1e-3, rtol=1e-3) if half else TOL))
    torch.testing.assert_close(out.float(), e_out.float(), **(dict(atol=2e-2, rtol=2e-2) if half else TOL))
    p, ref_out = brute(q.float(), k.float(), v.float(), allowed, scaling, kw.get("softcap"), kw.get("sinks"))
    if valid is not None:
        p = p * valid[:, None, :, None]
    torch.testing.assert_close(col, p.sum(-2), **(dict(atol=2e-2, rtol=2e-2) if half else TOL))
    rows = slice(None) if out_rows is None else out_rows
    torch.testing.assert_close(out[rows].float(), ref_out[rows], **(dict(atol=3e-2, rtol=3e-2) if half else TOL))
    if kw.get("sinks") is not None:
        ref_sm = sink_share(q.float(), k.float(), allowed, scaling, kw["sinks"], kw.get("softcap"), valid)
        torch.testing.assert_close(sm, ref_sm, **(dict(atol=2e-2, rtol=2e-2) if half else TOL))
        torch.testing.assert_close(sm, e_sm, **(dict(atol=1e-3, rtol=1e-3) if half else TOL))
    else:
        assert sm is None and e_sm is None
    return col


def qkv(B, hq, hkv, Tq, Tk, D, Dv=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)
    return r(B, hq, Tq, D), r(B, hkv, Tk, D), r(B, hkv, Tk, Dv or D)


@pytest.mark.parametrize("hq,hkv", [(4, 2), (3, 3), (6, 1)])
@pytest.mark.parametrize("T", [5, 70])  # one partial tile; two query and key tiles
def test_causal_gqa_matches_exact_and_eager(hq, hkv, T):
    q, k, v = qkv(2, hq, hkv, T, T, 8)
    check(q, k, v, None, causal(T, T), 0.35)


def test_bidirectional_and_decode_offset():
    q, k, v = qkv(1, 4, 2, 20, 20, 8)
    full = torch.ones(20, 20, dtype=torch.bool)
    check(q, k, v, full[None, None], full, 0.3, causal=False)
    q, k, v = qkv(1, 4, 2, 7, 75, 8, seed=1)  # 7 queries at the end of 75 keys, mask None = causal
    check(q, k, v, None, causal(7, 75), 0.3)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks_left_padding_and_query_validity(kind):
    B, T = 3, 67
    q, k, v = qkv(B, 4, 2, T, T, 16, seed=2)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :5] = False
    valid[2, :66] = False  # one real token
    allowed = causal(T, T)[None, None] & valid[:, None, None, :]
    mask = allowed if kind == "bool" else torch.zeros(B, 1, T, T).masked_fill(~allowed, torch.finfo(torch.float32).min)
    col = check(q, k, v, mask, allowed, 0.25, valid=valid, out_rows=(0,))
    assert col[1, :, :5].abs().max() == 0 and col[2, :, :66].abs().max() == 0  # padded keys get nothing
    torch.testing.assert_close(col[2, :, 66], torch.ones(4))  # the lone token attends only to itself


def test_sliding_window_softcap_sinks_and_dead_rows():
    B, T, D = 2, 70, 8
    q, k, v = qkv(B, 4, 2, T, T, D, seed=3)
    rows, cols = torch.arange(T)[:, None], torch.arange(T)[None, :]
    window = (cols <= rows) & (cols > rows - 9)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[0, :10] = False
    allowed = window[None, None] & valid[:, None, None, :]
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    check(q, k, v, allowed, allowed, 0.5, valid=valid, out_rows=(1,), softcap=2.0, sinks=sinks)


def test_per_head_mask_and_value_dim_differs_from_key_dim():
    B, T = 1, 40
    q, k, v = qkv(B, 4, 2, T, T, 24, Dv=12, seed=4)  # DeepSeek MLA: Dv != D
    allowed = causal(T, T)[None, None].repeat(1, 4, 1, 1)
    allowed[:, 1, :, 3] = False  # one head hides key 3
    check(q, k, v, allowed, allowed, 0.2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_give_float32_statistics(dtype):
    q, k, v = qkv(1, 4, 2, 66, 66, 16, dtype=dtype, seed=5)
    check(q, k, v, None, causal(66, 66), 0.25, sinks=torch.tensor([0.1, 1.0, -0.5, 0.0]))


@pytest.mark.parametrize("sinks", [None, torch.tensor([0.5, -1.0, 2.0, 0.0])])
def test_torch_flash_forward_bookkeeping(sinks):
    """The CUDA path's torch-flash branch, through torch's CPU twin: lse, GQA, the sink rescale."""
    q, k, v = qkv(2, 4, 2, 70, 70, 16, seed=6)
    valid = torch.ones(2, 70, dtype=torch.bool)
    check(q, k, v, None, causal(70, 70), 0.25, forward="torch", valid=valid, sinks=sinks)


def test_dispatcher_paths_agree_and_cpu_defaults_to_exact():
    q, k, v = qkv(1, 4, 2, 30, 30, 8, seed=7)
    a = attention_with_stats(q, k, v, None, 0.3, path="fused")
    b = attention_with_stats(q, k, v, None, 0.3, path="exact")
    torch.testing.assert_close(a[1], b[1], **TOL)
    assert a[2] is None and attention_with_stats(q, k, v, None, 0.3, keep_probs=True, path="fused")[2] is not None
    with pytest.raises(ValueError):
        attention_with_stats(q, k, v, None, 0.3, path="fast")
    from sinkhole.probe.attention import choose_path

    assert choose_path(q) == "exact"  # CPU tensors: the blocked path measured fastest there
    assert triton_attention.available("cpu")  # the self-check itself passes under the interpreter


def test_colsum_kernel_can_fail():
    """The comparison is not vacuous: a wrong lse (off by log 2) halves every column sum."""
    q, k, v = qkv(1, 2, 2, 20, 20, 8, seed=8)
    _, lse = triton_attention.triton_forward(q, k, v, None, 0.3)
    good = triton_attention.triton_colsum(q, k, lse, None, 0.3)
    bad = triton_attention.triton_colsum(q, k, lse + np.log(2.0), None, 0.3)
    torch.testing.assert_close(good.sum(-1), torch.full((1, 2), 20.0), **TOL)
    torch.testing.assert_close(bad, good / 2, **TOL)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_probe_same_numbers_on_fused_path(make, monkeypatch):
    """The whole probe (GQA, Gemma-3's sliding layer, a left-padded batch) on the fused path vs exact."""
    probe = ModelProbe(wrap(make()))
    prompts = [[5, 17, 3, 42, 8, 8, 91, 23, 11, 60, 2], [7, 1, 4]]
    monkeypatch.setenv("SINKHOLE_ATTENTION", "exact")
    ref = probe.run_batch(prompts)
    monkeypatch.setenv("SINKHOLE_ATTENTION", "fused")
    got = probe.run_batch(prompts)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a.attn_mass, b.attn_mass, atol=1e-5)
        np.testing.assert_allclose(a.resid_norm, b.resid_norm, rtol=1e-4)


def test_auto_path_falls_back_to_exact_when_a_kernel_fails(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this case")

    monkeypatch.setattr(triton_attention, "fused_attention_with_stats", broken)
    monkeypatch.setenv("SINKHOLE_ATTENTION", "fused")
    q, k, v = qkv(1, 4, 2, 12, 12, 8, seed=9)
    with pytest.warns(UserWarning, match="exact blocked path"):
        got = attention_with_stats(q, k, v, None, 0.3)
    torch.testing.assert_close(got[1], exact_attention_with_stats(q, k, v, None, 0.3)[1])
    with pytest.raises(RuntimeError):  # asked for by name: no silent fallback
        attention_with_stats(q, k, v, None, 0.3, path="fused")
