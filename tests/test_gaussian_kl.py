"""gaussian_kl against the reference, torch.distributions and float64 gradcheck."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import vaecuda
from vaecuda import reference as ref

from conftest import FLOAT_DTYPES, assert_matches_reference, leaf, noncontiguous


def _inputs(shape, dtype, device, scale=1.0, seed=None):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    mu = (torch.randn(shape, generator=g) * scale).to(device, dtype)
    lv = (torch.randn(shape, generator=g) * scale).to(device, dtype)
    return mu, lv


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(7, 20), (128, 32), (3, 5, 64), (1, 1), (4, 1030)])
@pytest.mark.parametrize("prior", [False, True])
def test_forward_backward_matches_reference(device, dtype, shape, prior):
    mu, lv = _inputs(shape, dtype, device)
    pm, pl = _inputs(shape, dtype, device) if prior else (None, None)
    out = assert_matches_reference(vaecuda.gaussian_kl, ref.gaussian_kl, [mu, lv, pm, pl], dtype)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_against_torch_distributions(device):
    mu, lv = _inputs((64, 16), torch.float64, device)
    pm, pl = _inputs((64, 16), torch.float64, device)
    q = Normal(mu, torch.exp(0.5 * lv))
    expected = kl_divergence(q, Normal(pm, torch.exp(0.5 * pl))).sum(-1)
    torch.testing.assert_close(vaecuda.gaussian_kl(mu, lv, pm, pl), expected)
    expected0 = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
    torch.testing.assert_close(vaecuda.gaussian_kl(mu, lv), expected0)


def test_broadcast_prior_and_its_gradient(device):
    mu, lv = _inputs((32, 8), torch.float64, device)
    pm, pl = _inputs((8,), torch.float64, device)
    args = [leaf(t) for t in (mu, lv, pm, pl)]
    args_ref = [leaf(t) for t in (mu, lv, pm, pl)]
    vaecuda.gaussian_kl(*args).sum().backward()
    ref.gaussian_kl(*args_ref).sum().backward()
    for a, b in zip(args, args_ref):
        assert a.grad.shape == a.shape
        torch.testing.assert_close(a.grad, b.grad)
    # a learned global logvar of shape [D] broadcast against per-row mu
    out = vaecuda.gaussian_kl(mu, lv[0])
    torch.testing.assert_close(out, ref.gaussian_kl(mu, lv[0]))
    # only one prior parameter: the other is 0 (mean 0 or unit variance)
    torch.testing.assert_close(vaecuda.gaussian_kl(mu, lv, prior_mu=pm), ref.gaussian_kl(mu, lv, pm, torch.zeros_like(pm)))
    torch.testing.assert_close(vaecuda.gaussian_kl(mu, lv, prior_logvar=pl),
                               ref.gaussian_kl(mu, lv, torch.zeros_like(pl), pl))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
@pytest.mark.parametrize("prior", [False, True])
def test_gradcheck_float64(device, seed, layout, prior):
    mu, lv = _inputs((5, 9), torch.float64, device, seed=seed)
    pm, pl = _inputs((5, 9), torch.float64, device, seed=seed + 100)
    ts = [mu, lv] + ([pm, pl] if prior else [])
    if layout == "noncontiguous":
        ts = [noncontiguous(t) for t in ts]
    ts = [t.requires_grad_() for t in ts]
    assert torch.autograd.gradcheck(lambda *a: vaecuda.gaussian_kl(*a), ts)
    assert torch.autograd.gradcheck(lambda *a: vaecuda.gaussian_kl(*a, reduction="mean"), ts)


def test_noncontiguous_gives_the_same_bits(device):
    mu, lv = _inputs((33, 70), torch.float32, device)
    a = vaecuda.gaussian_kl(mu, lv)
    b = vaecuda.gaussian_kl(noncontiguous(mu), noncontiguous(lv))
    c = vaecuda.gaussian_kl(mu.t().contiguous().t(), lv.t().contiguous().t())  # column-major
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_reductions(device, reduction):
    mu, lv = _inputs((2, 3, 4), torch.float32, device)
    per_row = ref.gaussian_kl(mu, lv)
    expected = {"none": per_row, "sum": per_row.sum(), "mean": per_row.mean()}[reduction]
    torch.testing.assert_close(vaecuda.gaussian_kl(mu, lv, reduction=reduction), expected)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("width", [6, 8])  # 8: the backward's quad kernels (elementwise gradient)
@pytest.mark.parametrize("prior", [False, True])
def test_free_bits(device, reduction, width, prior):
    mu, lv = _inputs((16, width), torch.float64, device)
    half = width // 2
    mu[:, :half] *= 0.01  # nearly collapsed dims, KL well below the threshold
    lv[:, :half] *= 0.01
    mu[:, half:] += 2.0  # and dims well above it
    mu, lv = leaf(mu), leaf(lv)
    # a prior close to N(0, I) keeps the collapsed dims collapsed
    pri = tuple(leaf(0.01 * p) for p in _inputs((width,), torch.float64, device, seed=1)) if prior else (None, None)
    lam = 0.5
    out = vaecuda.gaussian_kl(mu, lv, *pri, reduction=reduction, free_bits=lam)
    per_dim = ref.gaussian_kl(mu, lv, *pri, elementwise=True).mean(0)
    expected = per_dim.clamp_min(lam).sum() * (1 if reduction == "mean" else 16)
    torch.testing.assert_close(out, expected)
    out.backward()
    assert torch.all(mu.grad[:, :half] == 0) and torch.all(lv.grad[:, :half] == 0)
    assert torch.all(mu.grad[:, half:] != 0)
    leaves = [t.detach().requires_grad_() for t in (mu, lv) + (pri if prior else ())]
    assert torch.autograd.gradcheck(lambda *ts: vaecuda.gaussian_kl(*ts, reduction=reduction, free_bits=lam), leaves)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("elementwise", [False, True])
def test_saved_gradient_path_gives_the_backward_ops_bits(device, dtype, elementwise):
    """On the CPU the forward also writes d/dlogvar when logvar requires grad, and the backward is two
    multiplies; the gradients must be the backward op's, bit for bit, with and without the graph
    retained (the buffer is scaled in place only when it is not), and with create_graph (which takes
    the backward op, so a second derivative raises rather than comes out wrong)."""
    mu, lv = _inputs((6, 3, 40), dtype, device, scale=3.0)
    gshape = (6, 3, 40) if elementwise else (6, 3)
    g1, g2 = torch.randn(gshape, dtype=dtype, device=device), torch.randn(gshape, dtype=dtype, device=device)
    want1 = torch.ops.vaecuda.gaussian_kl_backward(g1, mu, lv, None, None, elementwise, [True, True, False, False])[:2]
    want2 = torch.ops.vaecuda.gaussian_kl_backward(g2, mu, lv, None, None, elementwise, [True, True, False, False])[:2]
    m, l = leaf(mu), leaf(lv)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = torch.ops.vaecuda.gaussian_kl(m, l, None, None, elementwise)
        first = torch.autograd.grad(out, [m, l], g1, retain_graph=True)
    names = {e.name for e in prof.events()}
    on_cpu = torch.device(device).type == "cpu"  # which path ran: the saved gradient's on the CPU only
    assert ("vaecuda::_gaussian_kl_and_grad" in names) == on_cpu
    assert ("vaecuda::gaussian_kl_backward" in names) != on_cpu
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.ops.vaecuda.gaussian_kl(m, l, None, None, elementwise)  # no gradient to come: no buffer
    assert "vaecuda::_gaussian_kl_and_grad" not in {e.name for e in prof.events()}
    torch.testing.assert_close(out, torch.ops.vaecuda.gaussian_kl(mu, lv, None, None, elementwise), rtol=0, atol=0)
    again = torch.autograd.grad(out, [m, l], g1, retain_graph=True)
    other = torch.autograd.grad(out, [m, l], g2)  # frees the graph: the in-place path
    for got, want in ((first, want1), (again, want1), (other, want2)):
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert not torch.equal(first[1], other[1])
    # only logvar, only mu
    (dl,) = torch.autograd.grad(vaecuda.gaussian_kl(mu, l) if not elementwise else
                                torch.ops.vaecuda.gaussian_kl(mu, l, None, None, True), [l], g1)
    assert torch.equal(dl, want1[1])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        (dm,) = torch.autograd.grad(torch.ops.vaecuda.gaussian_kl(m, lv, None, None, elementwise), [m], g1)
    assert torch.equal(dm, want1[0]) and torch.equal(dm, (g1 if elementwise else g1[..., None]) * mu)
    names = {e.name for e in prof.events()}  # only mu: g mu on the CPU, no kernel, no buffer
    assert ("vaecuda::gaussian_kl_backward" in names) != on_cpu and "vaecuda::_gaussian_kl_and_grad" not in names
    # with a graph: the backward op's values, and a clear error on the second derivative
    graph = torch.autograd.grad(torch.ops.vaecuda.gaussian_kl(m, l, None, None, elementwise), [m, l], g1,
                                create_graph=True)
    assert all(torch.equal(a.detach(), b) for a, b in zip(graph, want1))
    with pytest.raises(RuntimeError, match="second derivative of .* is not implemented"):
        graph[1].sum().backward()


def test_free_bits_on_empty_inputs(device):
    """No latent dims: 0. No rows: "sum" is 0 (a sum over nothing) and "mean" NaN (the mean of nothing),
    as without free_bits; both still backpropagate."""
    for reduction in ("sum", "mean"):
        out = vaecuda.gaussian_kl(torch.zeros(4, 0, device=device), torch.zeros(4, 0, device=device),
                                  reduction=reduction, free_bits=0.5)
        assert out.item() == 0.0
    mu = torch.zeros(0, 6, device=device, requires_grad=True)
    out = vaecuda.gaussian_kl(mu, torch.zeros(0, 6, device=device), reduction="sum", free_bits=0.5)
    assert out.item() == 0.0 == vaecuda.gaussian_kl(mu, torch.zeros(0, 6, device=device), reduction="sum").item()
    out.backward()
    assert mu.grad.shape == (0, 6)
    assert torch.isnan(vaecuda.gaussian_kl(mu, torch.zeros(0, 6, device=device), reduction="mean", free_bits=0.5))
    none = torch.zeros(0, 0, device=device)  # no rows and no dims: still the mean of nothing
    assert torch.isnan(vaecuda.gaussian_kl(none, none, reduction="mean", free_bits=0.5))
    assert torch.isnan(vaecuda.gaussian_kl(none, none, reduction="mean"))


def test_extreme_values_are_finite(device):
    lv = torch.linspace(-30, 30, 601, device=device).reshape(1, -1).repeat(2, 1)
    mu = torch.linspace(-50, 50, 601, device=device).reshape(1, -1).repeat(2, 1)
    for prior in (None, (torch.zeros_like(mu), torch.flip(lv, [1]))):
        args = (leaf(mu), leaf(lv)) + (tuple(leaf(p) for p in prior) if prior else ())
        out = vaecuda.gaussian_kl(*args)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, ref.gaussian_kl(*[a.double() for a in args]).float(), rtol=1e-5, atol=1e-3)
        out.sum().backward()
        assert all(torch.isfinite(a.grad).all() for a in args)


def test_nan_propagates(device):
    mu, lv = _inputs((3, 5), torch.float32, device)
    mu[0, 1] = float("nan")
    lv[1, 2] = float("nan")
    mu, lv = leaf(mu), leaf(lv)
    out = vaecuda.gaussian_kl(mu, lv)
    assert torch.isnan(out[:2]).all() and torch.isfinite(out[2])
    out.sum().backward()
    assert torch.isnan(mu.grad[0, 1]) and torch.isnan(lv.grad[1, 2])


def test_empty(device):
    mu = torch.zeros(0, 8, device=device, requires_grad=True)
    out = vaecuda.gaussian_kl(mu, torch.zeros(0, 8, device=device))
    assert out.shape == (0,)
    out.sum().backward()
    assert mu.grad.shape == (0, 8)
    assert vaecuda.gaussian_kl(torch.zeros(4, 0, device=device), torch.zeros(4, 0, device=device)).tolist() == [0] * 4
    assert vaecuda.gaussian_kl(mu, mu, reduction="mean").isnan()  # the mean of nothing, as torch
