"""The fused CPU softmax + column-sum kernel (sinkhole/probe/csrc) against its torch specification."""

import shutil
import warnings

import pytest
import torch

from sinkhole.probe import cpu_kernel
from sinkhole.probe.attention import attention_with_stats

needs_kernel = pytest.mark.skipif(
    cpu_kernel._compiler() is None, reason="no C compiler here: the torch ops are the documented fallback"
)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A kernel state and cache of its own (so a build is really attempted)."""
    monkeypatch.setattr(cpu_kernel, "_STATE", {})
    monkeypatch.setenv("SINKHOLE_CACHE", str(tmp_path))
    return tmp_path


def test_builds_where_a_compiler_exists():
    """Where cc exists (CI, the dev VM) the kernel must build and pass its self-check, else every
    kernel test below would skip and the slow path would ship unnoticed."""
    if shutil.which("cc") or shutil.which("gcc"):
        assert cpu_kernel.kernel() is not None


@needs_kernel
@pytest.mark.parametrize("causal_base", [None, 0, 5, 40])
@pytest.mark.parametrize("with_sinks", [False, True])
@pytest.mark.parametrize("with_valid", [False, True])
def test_matches_torch_specification(causal_base, with_sinks, with_valid):
    g = torch.Generator().manual_seed(7)
    B, Hkv, G, tb, L = 2, 2, 3, 6, 45
    scores = torch.randn(B, Hkv, G, tb, L, generator=g) * 8
    scores[1, 0, :, 2] = float("-inf")  # a fully masked row (left padding)
    scores[0, 1, 1, :, 10:20] = float("-inf")  # masked keys
    valid = (torch.rand(B, tb, generator=g) > 0.3).float() if with_valid else None
    sinks = torch.randn(Hkv * G, generator=g) * 3 if with_sinks else None
    results = []
    for step in (cpu_kernel.softmax_colsum, cpu_kernel.reference_softmax_colsum):
        s = scores.clone()
        colsum = torch.full((B, Hkv, G, L + 3), 0.25)  # accumulates into existing sums, up to L only
        mass = torch.zeros(B, Hkv, G, dtype=torch.float64) if with_sinks else None
        step(s, colsum, causal_base, valid, sinks, mass)
        results.append((s, colsum, mass))
    (s1, c1, m1), (s2, c2, m2) = results
    torch.testing.assert_close(s1, s2, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(c1, c2, atol=1e-6, rtol=1e-5)
    assert (c1[..., L:] == 0.25).all()
    assert (s1[1, 0, :, 2] == 0).all()  # the masked row attends to nothing
    if with_sinks:
        torch.testing.assert_close(m1, m2, atol=1e-7, rtol=1e-5)
    if causal_base is not None:  # keys after each row's limit get exactly zero
        hidden = torch.ones(tb, L, dtype=torch.bool).triu_(causal_base + 1)
        assert (s1[..., hidden] == 0).all()


@needs_kernel
def test_exp_is_accurate_over_the_whole_range():
    """Scores far below the row maximum (down to float32's normal range) keep float32 accuracy, and
    masked or underflowing scores give exactly 0. One row per score x: [x, 0], so p = e^x / (1 + e^x)."""
    x = torch.cat([torch.linspace(-80, 0, 20001), torch.tensor([-87.5, -1e4, float("-inf")])])
    s = torch.stack([x, torch.zeros_like(x)], -1).reshape(1, 1, 1, -1, 2).contiguous()
    cpu_kernel.softmax_colsum(s, torch.zeros(1, 1, 1, 2), None)
    want = torch.sigmoid(x.double())
    got = s[..., 0].flatten().double()
    assert ((got[:20001] - want[:20001]).abs() / want[:20001]).max() < 1e-6
    assert (got[20001:] == 0).all()


def test_build_failure_warns_once_and_falls_back(fresh, monkeypatch):
    monkeypatch.setattr(cpu_kernel, "_compiler", lambda: shutil.which("false") or "/bin/false")
    with pytest.warns(UserWarning, match="could not build the CPU attention kernel"):
        assert cpu_kernel.kernel() is None
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 7, 4), torch.randn(1, 1, 7, 4), torch.randn(1, 1, 7, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not per call
        out, colsum, _, _ = attention_with_stats(q, k, v, None, 0.5)
    torch.testing.assert_close(colsum.sum(-1), torch.full((1, 2), 7.0))


@needs_kernel
def test_turned_off_and_cached(fresh, monkeypatch):
    monkeypatch.setenv("SINKHOLE_CPU_KERNEL", "0")
    assert cpu_kernel.kernel() is None
    monkeypatch.setattr(cpu_kernel, "_STATE", {})
    monkeypatch.delenv("SINKHOLE_CPU_KERNEL")
    assert cpu_kernel.kernel() is not None
    built = list((fresh / "kernels").glob("*.so"))
    assert len(built) == 1
    monkeypatch.setattr(cpu_kernel, "_STATE", {})
    monkeypatch.setattr(cpu_kernel, "_build", lambda *a: pytest.fail("rebuilt although cached"))
    assert cpu_kernel.kernel() is not None


@needs_kernel
def test_a_wrong_kernel_is_refused(fresh, monkeypatch):
    """The self-check catches a library that computes something else (here: no normalisation)."""
    src = cpu_kernel.resources.files("sinkhole.probe").joinpath("csrc").joinpath(cpu_kernel.SOURCE).read_bytes()
    broken = src.replace(b"row[j] = e * rinv;", b"row[j] = e;")
    assert broken != src
    real_build = cpu_kernel._build
    monkeypatch.setattr(cpu_kernel, "_build", lambda cc, source, target: real_build(cc, broken, target))
    with pytest.warns(UserWarning, match="disagreed with torch"):
        assert cpu_kernel.kernel() is None


@pytest.mark.parametrize("T", [6, 600])  # 600: long enough for the threaded path, which must step aside too
def test_gradients_take_the_torch_ops(T):
    """The kernel writes through raw pointers, and the threaded path's workers write slices of one
    tensor: with gradients flowing, one call with torch ops must run, and gradients be right."""
    torch.manual_seed(1)
    q = torch.randn(1, 2, T, 4, requires_grad=True)
    k, v = torch.randn(1, 2, T, 4), torch.randn(1, 2, T, 4)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out, _, _, _ = attention_with_stats(q, k, v, None, 0.5)
    finally:
        torch.set_num_threads(before)
    out.sum().backward()
    q2 = q.detach().clone().requires_grad_()
    ref = torch.nn.functional.scaled_dot_product_attention(q2, k, v, is_causal=True, scale=0.5)
    ref.transpose(1, 2).sum().backward()
    torch.testing.assert_close(q.grad, q2.grad, atol=1e-5, rtol=1e-5)
