"""reparameterize and reparameterize_with_kl: samples equal the reference's for the same seed, the
backward regenerates the same noise, and the outside oracle (torch.distributions) agrees."""

import os
import subprocess
import sys

import pytest
import torch
from torch.distributions import Normal

import vaecuda
from vaecuda import reference as ref

from conftest import FLOAT_DTYPES, LOSS_TOL, VALUE_TOL, leaf, noncontiguous, requires_compiled


def _inputs(shape, dtype, device, seed=None):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return (torch.randn(shape, generator=g).to(device, dtype), torch.randn(shape, generator=g).to(device, dtype))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(8, 20), (128, 32), (2, 3, 50), (1, 1), (3, 300)])
@pytest.mark.parametrize("n_samples", [None, 1, 5])
def test_matches_reference(device, dtype, shape, n_samples):
    mu, lv = _inputs(shape, dtype, device)
    a, b = (leaf(mu), leaf(lv)), (leaf(mu), leaf(lv))
    z = vaecuda.reparameterize(*a, n_samples=n_samples, seed=11, offset=3)
    expected = ref.reparameterize(*b, vaecuda.rng_state(11, 3, device), n_samples)
    assert z.shape == ((n_samples,) if n_samples else ()) + shape and z.dtype == dtype
    torch.testing.assert_close(z, expected, **VALUE_TOL[dtype])
    g = torch.randn_like(z)
    z.backward(g)
    expected.backward(g)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, **VALUE_TOL[dtype])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n_samples", [None, 3])
def test_with_kl_matches_separate_ops(device, dtype, n_samples):
    mu, lv = _inputs((16, 24), dtype, device)
    a, b = (leaf(mu), leaf(lv)), (leaf(mu), leaf(lv))
    z, kl = vaecuda.reparameterize_with_kl(*a, n_samples=n_samples, seed=5)
    z_ref = ref.reparameterize(*b, vaecuda.rng_state(5, device=device), n_samples)
    kl_ref = ref.gaussian_kl(*b)
    assert torch.equal(z, vaecuda.reparameterize(mu, lv, n_samples=n_samples, seed=5))
    assert torch.equal(kl, vaecuda.gaussian_kl(mu, lv))  # one pass gives the KL op's very bits
    torch.testing.assert_close(kl, kl_ref, **LOSS_TOL[dtype])
    gz, gk = torch.randn_like(z), torch.randn_like(kl)
    torch.autograd.backward([z, kl], [gz, gk])
    torch.autograd.backward([z_ref, kl_ref], [gz, gk])
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, **VALUE_TOL[dtype])
    # only one of the two outputs used
    for use in ("z", "kl"):
        c = (leaf(mu), leaf(lv))
        z2, kl2 = vaecuda.reparameterize_with_kl(*c, n_samples=n_samples, seed=5)
        (z2.sum() if use == "z" else kl2.sum()).backward()
        d = (leaf(mu), leaf(lv))
        (ref.reparameterize(*d, vaecuda.rng_state(5, device=device), n_samples).sum() if use == "z"
         else ref.gaussian_kl(*d).sum()).backward()
        for x, y in zip(c, d):
            torch.testing.assert_close(x.grad, y.grad, **VALUE_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_with_kl_half_gradients_rounded_once(device, dtype):
    """The sample's and the KL's gradients add in float32 and are rounded to the half dtype once, in
    the kernels and in the reference alike: each within an ulp of the float64 gradient rounded, where
    rounding each term first, then their sum, missed by up to 14% where the terms cancel, and turned
    an overflow into NaN (inf + -inf)."""
    g = torch.Generator().manual_seed(3)
    mu, lv = (torch.randn(3, 600, generator=g) for _ in range(2))
    mu[0, :4] = torch.tensor([0.3, -1.2, 0.7, 2.0])
    lv[0, :4] = torch.tensor([0.5, -0.4, 1.1, -2.0])
    state = vaecuda.rng_state(0, device=device)
    mu, lv = mu.to(device, dtype), lv.to(device, dtype)

    def grads(f, m, l):
        m, l = leaf(m), leaf(l)
        z, kl = f(m, l)
        return torch.autograd.grad(z.float().sum() + kl.sum(), [m, l])

    truth = grads(lambda m, l: ref.reparameterize_with_kl(m, l, state, 2), mu.double(), lv.double())
    ulp = torch.finfo(dtype).eps
    for f in (lambda m, l: vaecuda.reparameterize_with_kl(m, l, n_samples=2, seed=state),
              lambda m, l: ref.reparameterize_with_kl(m, l, state, 2)):
        for got, want in zip(grads(f, mu, lv), truth):
            assert got.dtype == dtype
            torch.testing.assert_close(got.double(), want.to(dtype).double(), rtol=ulp, atol=1e-6)
    # e^30 / 2 overflows float16: d logvar is inf, not NaN
    if dtype == torch.float16:
        for f in (lambda m, l: vaecuda.reparameterize_with_kl(m, l, seed=state),
                  lambda m, l: ref.reparameterize_with_kl(m, l, state)):
            d_lv = grads(f, torch.zeros(1, 4, device=device, dtype=dtype),
                         torch.full((1, 4), 30.0, device=device, dtype=dtype))[1]
            assert torch.isinf(d_lv).all() and (d_lv > 0).all()


def test_reduction_of_kl(device):
    mu, lv = _inputs((6, 4), torch.float32, device)
    _, kl = vaecuda.reparameterize_with_kl(mu, lv, seed=0, reduction="mean")
    torch.testing.assert_close(kl, ref.gaussian_kl(mu, lv).mean())


def test_against_torch_distributions_given_the_same_eps(device, monkeypatch):
    mu, lv = _inputs((10, 7), torch.float64, device)
    z = vaecuda.reparameterize(mu, lv, seed=99)
    eps = ref.normals(vaecuda.rng_state(99, device=device), 0, z.numel()).reshape(z.shape).double()
    import torch.distributions.normal as normal_mod
    monkeypatch.setattr(normal_mod, "_standard_normal", lambda shape, dtype, device: eps.to(dtype))
    expected = Normal(mu, torch.exp(0.5 * lv)).rsample()
    torch.testing.assert_close(z, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
@pytest.mark.parametrize("with_kl", [False, True])
def test_gradcheck_float64(device, seed, layout, with_kl):
    mu, lv = _inputs((4, 9), torch.float64, device, seed=seed)
    if layout == "noncontiguous":
        mu, lv = noncontiguous(mu), noncontiguous(lv)
    mu, lv = mu.requires_grad_(), lv.requires_grad_()
    if with_kl:
        f = lambda m, l: vaecuda.reparameterize_with_kl(m, l, n_samples=3, seed=seed)  # noqa: E731
    else:
        f = lambda m, l: vaecuda.reparameterize(m, l, n_samples=2, seed=seed)  # noqa: E731
    assert torch.autograd.gradcheck(f, [mu, lv])


def test_samples_share_one_stream(device):
    mu, lv = _inputs((5, 6), torch.float32, device)
    one = vaecuda.reparameterize(mu, lv, seed=3)
    many = vaecuda.reparameterize(mu, lv, n_samples=4, seed=3)
    assert torch.equal(many[0], one)  # sample 0 of K is the single sample
    assert not torch.equal(many[1], many[0])
    # the flat index keys the noise: z[k] uses elements k * numel .. (k + 1) * numel
    eps = (many.double() - mu.double()) / torch.exp(0.5 * lv.double())
    expected = ref.normals(vaecuda.rng_state(3, device=device), 0, many.numel()).reshape(many.shape).double()
    torch.testing.assert_close(eps, expected, rtol=1e-4, atol=1e-4)


def test_noncontiguous_and_broadcast_give_the_same_bits(device):
    mu, lv = _inputs((9, 37), torch.float32, device)
    z = vaecuda.reparameterize(mu, lv, n_samples=2, seed=1)
    assert torch.equal(z, vaecuda.reparameterize(noncontiguous(mu), noncontiguous(lv), n_samples=2, seed=1))
    shared = lv[0]  # a learned global logvar [D]
    zb = vaecuda.reparameterize(mu, shared, seed=1)
    assert torch.equal(zb, vaecuda.reparameterize(mu, shared.expand_as(mu).contiguous(), seed=1))
    shared = leaf(shared)
    vaecuda.reparameterize(mu, shared, seed=1).sum().backward()
    expected = leaf(lv[0])
    ref.reparameterize(mu, expected, vaecuda.rng_state(1, device=device)).sum().backward()
    torch.testing.assert_close(shared.grad, expected.grad)


def test_seed_semantics(device):
    mu, lv = _inputs((4, 8), torch.float32, device)
    assert torch.equal(vaecuda.reparameterize(mu, lv, seed=7), vaecuda.reparameterize(mu, lv, seed=7))
    assert not torch.equal(vaecuda.reparameterize(mu, lv, seed=7), vaecuda.reparameterize(mu, lv, seed=8))
    assert not torch.equal(vaecuda.reparameterize(mu, lv, seed=7), vaecuda.reparameterize(mu, lv, seed=7, offset=1))
    torch.manual_seed(1)
    a = vaecuda.reparameterize(mu, lv)
    b = vaecuda.reparameterize(mu, lv)
    torch.manual_seed(1)
    assert torch.equal(a, vaecuda.reparameterize(mu, lv)) and not torch.equal(a, b)



def test_offset_applies_to_every_kind_of_key(device):
    """offset is added (mod 2^64) to the key's offset word for an int seed, a key tensor (left as it
    is) and a drawn key alike: never silently dropped."""
    mu, lv = _inputs((4, 8), torch.float32, device)
    key = vaecuda.rng_state(5, 2, device)
    want = vaecuda.reparameterize(mu, lv, seed=5, offset=5)
    assert torch.equal(vaecuda.reparameterize(mu, lv, seed=key, offset=3), want)
    assert key.tolist() == [5, 2]
    assert torch.equal(vaecuda.reparameterize_with_kl(mu, lv, seed=key, offset=3)[0], want)
    # mod 2^64: offset 2^64 - 1 is -1
    assert torch.equal(vaecuda.reparameterize(mu, lv, seed=key, offset=2**64 - 1),
                       vaecuda.reparameterize(mu, lv, seed=5, offset=1))
    assert vaecuda.rng_state(vaecuda.rng_state(0, 2**63 - 1), 1).tolist() == [0, -(2**63)]
    # a drawn key: the draw of the same generator state, offset added
    torch.manual_seed(3)
    drawn = vaecuda.rng_state(None, device=device)
    torch.manual_seed(3)
    assert torch.equal(vaecuda.reparameterize(mu, lv, offset=4), vaecuda.reparameterize(mu, lv, seed=drawn, offset=4))
    torch.manual_seed(3)
    assert not torch.equal(vaecuda.reparameterize(mu, lv, offset=4), vaecuda.reparameterize(mu, lv, seed=drawn))
    with pytest.raises(TypeError, match="offset must be an int"):
        vaecuda.reparameterize(mu, lv, seed=key, offset=1.0)
    with pytest.raises(ValueError, match="offset must fit in 64 bits"):
        vaecuda.rng_state(None, 2**64)

@requires_compiled
def test_every_cpu_instruction_set_agrees(tmp_path):
    # the noise is the same bits on every instruction set (test_philox.py); exp may use FMA on AVX2,
    # so z agrees to float32 rounding
    code = ("import sys, torch, vaecuda; g = torch.Generator().manual_seed(0); "
            "mu = torch.randn(64, 50, generator=g); lv = torch.randn(64, 50, generator=g); "
            "torch.save(vaecuda.reparameterize_with_kl(mu, lv, n_samples=3, seed=4), sys.argv[1])")
    outs = []
    for isa in ("default", "auto"):
        path = str(tmp_path / f"{isa}.pt")
        subprocess.run([sys.executable, "-c", code, path], check=True, env={**os.environ, "VAECUDA_CPU_ISA": isa})
        outs.append(torch.load(path))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_extreme_values(device):
    lv = torch.linspace(-30, 30, 301, device=device).repeat(3, 1)
    mu = torch.linspace(-1e3, 1e3, 301, device=device).repeat(3, 1)
    a = (leaf(mu), leaf(lv))
    z, kl = vaecuda.reparameterize_with_kl(*a, seed=2)
    assert torch.isfinite(z).all() and torch.isfinite(kl).all()
    torch.testing.assert_close(z, ref.reparameterize(mu, lv, vaecuda.rng_state(2, device=device)), rtol=1e-5, atol=1e-4)
    (z.sum() + kl.sum()).backward()
    assert torch.isfinite(a[0].grad).all() and torch.isfinite(a[1].grad).all()


def test_nan_propagates(device):
    mu, lv = _inputs((3, 4), torch.float32, device)
    mu[0, 0] = float("nan")
    lv[1, 1] = float("nan")
    z, kl = vaecuda.reparameterize_with_kl(mu, lv, seed=0)
    assert torch.isnan(z[0, 0]) and torch.isnan(z[1, 1]) and torch.isnan(kl[:2]).all()
    assert torch.isfinite(z[2]).all() and torch.isfinite(kl[2])


def test_empty(device):
    mu = torch.zeros(0, 5, device=device, requires_grad=True)
    z, kl = vaecuda.reparameterize_with_kl(mu, torch.zeros(0, 5, device=device), n_samples=3, seed=0)
    assert z.shape == (3, 0, 5) and kl.shape == (0,)
    (z.sum() + kl.sum()).backward()
    assert mu.grad.shape == (0, 5)


def test_statistics_of_samples(device):
    mu = torch.full((1000, 100), 2.0, device=device)
    lv = torch.full((1000, 100), 2 * torch.log(torch.tensor(3.0)).item(), device=device)
    z = vaecuda.reparameterize(mu, lv, seed=21).double()
    assert abs(z.mean().item() - 2.0) < 5 * 3 / 316
    assert abs(z.std().item() - 3.0) < 0.02
