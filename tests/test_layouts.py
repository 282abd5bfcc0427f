"""Row widths and layouts. Values do not depend on the operands' layout, bit for bit (contiguous,
every other column, column-major, a broadcast row), at widths that take every kernel shape: on CUDA
8 lanes, a warp or a block per row, vector or strided loads, widths that are and are not multiples of
4 (a quad of 4 columns is the unit of the kernels); on the CPU the vectorized loops and their tails.
Gradients agree across layouts and everything agrees with the reference."""

import pytest
import torch

import vaecuda
from vaecuda import reference as ref

from conftest import LOSS_TOL, VALUE_TOL, noncontiguous

# 8 lanes (3, 20, 32), a warp (36, 131, 784), a block (1030, 3072) per row on CUDA; 3, 131 and 1030
# are not multiples of 4
WIDTHS = [3, 20, 32, 36, 131, 784, 1030, 3072]
DTYPES = [torch.float32, torch.bfloat16]


def _layouts(t: torch.Tensor) -> dict:
    """The same values in three layouts, each a leaf that requires grad."""
    out = {"contiguous": t.clone(), "strided": noncontiguous(t), "column-major": t.t().contiguous().t()}
    for v in out.values():
        v.requires_grad_(True)
    return out


def _grads(out, inputs, g):
    return torch.autograd.grad(out, inputs, g)


def _rand(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(device, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_kl_layouts(device, width, dtype):
    rows = 5
    mus, lvs = _layouts(_rand((rows, width), dtype, device, 0)), _layouts(_rand((rows, width), dtype, device, 1))
    g = _rand((rows,), torch.float32, device, 2)
    results = {}
    for name in mus:
        kl = vaecuda.gaussian_kl(mus[name], lvs[name])
        results[name] = (kl, _grads(kl, (mus[name], lvs[name]), g))
    kl, (dmu, dlv) = results["contiguous"]
    for name, (other, (omu, olv)) in results.items():
        assert torch.equal(other, kl), name
        torch.testing.assert_close(omu, dmu, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(olv, dlv, rtol=0, atol=0, msg=name)
    mu, lv = mus["contiguous"], lvs["contiguous"]
    torch.testing.assert_close(kl, ref.gaussian_kl(mu, lv), **LOSS_TOL[dtype])
    m, l = mu.detach().clone().requires_grad_(), lv.detach().clone().requires_grad_()
    rmu, rlv = _grads(ref.gaussian_kl(m, l), (m, l), g)
    torch.testing.assert_close(dmu, rmu, **VALUE_TOL[dtype])
    torch.testing.assert_close(dlv, rlv, **VALUE_TOL[dtype])
    # a prior broadcast along the rows ([D]) against the same prior copied per row
    pm, plv = _rand((width,), dtype, device, 3), _rand((width,), dtype, device, 4)
    a = vaecuda.gaussian_kl(mu, lv, pm, plv)
    assert torch.equal(a, vaecuda.gaussian_kl(mu, lv, pm.expand(rows, width).contiguous(),
                                              plv.expand(rows, width).contiguous()))
    torch.testing.assert_close(a, ref.gaussian_kl(mu, lv, pm, plv), **LOSS_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_sample_with_kl_layouts(device, width, dtype):
    rows, k = 5, 3
    mus, lvs = _layouts(_rand((rows, width), dtype, device, 5)), _layouts(_rand((rows, width), dtype, device, 6))
    gz = _rand((k, rows, width), dtype, device, 7)
    gkl = _rand((rows,), torch.float32, device, 8)
    results = {}
    for name in mus:
        z, kl = vaecuda.reparameterize_with_kl(mus[name], lvs[name], n_samples=k, seed=11)
        results[name] = (z, kl, torch.autograd.grad((z, kl), (mus[name], lvs[name]), (gz, gkl)))
    z, kl, (dmu, dlv) = results["contiguous"]
    for name, (oz, okl, (omu, olv)) in results.items():
        assert torch.equal(oz, z) and torch.equal(okl, kl), name
        torch.testing.assert_close(omu, dmu, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(olv, dlv, rtol=0, atol=0, msg=name)
    mu, lv = mus["contiguous"], lvs["contiguous"]
    assert torch.equal(kl, vaecuda.gaussian_kl(mu, lv))  # one pass, the KL op's very bits
    assert torch.equal(z, vaecuda.reparameterize(mu, lv, n_samples=k, seed=11))
    state = vaecuda.rng_state(11, device=device)
    torch.testing.assert_close(z, ref.reparameterize(mu, lv, state, k), **VALUE_TOL[dtype])
    # the gradients against the reference's, given the same noise
    m, l = mu.detach().clone().requires_grad_(), lv.detach().clone().requires_grad_()
    zr, klr = ref.reparameterize_with_kl(m, l, state, k)
    rmu, rlv = torch.autograd.grad((zr, klr), (m, l), (gz, gkl))
    torch.testing.assert_close(dmu, rmu, **VALUE_TOL[dtype])
    torch.testing.assert_close(dlv, rlv, **VALUE_TOL[dtype])


@pytest.mark.parametrize("target_dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_bernoulli_layouts(device, width, dtype, target_dtype):
    rows, k = 5, 2
    base = _rand((k * rows, width), dtype, device, 9)
    bits = (_rand((rows, width), torch.float32, device, 10) > 0).to(target_dtype)
    g = _rand((k, rows), torch.float32, device, 12)
    results = {}
    for name, t in _layouts(base).items():
        logits = t.view(k, rows, width) if t.is_contiguous() else t.unflatten(0, (k, rows))
        ll = vaecuda.bernoulli_log_prob(logits, bits)  # the target broadcast over the sample dim
        results[name] = (ll, torch.autograd.grad(ll, t, g)[0])
    ll, d = results["contiguous"]
    for name, (oll, od) in results.items():
        assert torch.equal(oll, ll), name
        torch.testing.assert_close(od, d, rtol=0, atol=0, msg=name)
    logits = base.view(k, rows, width)
    torch.testing.assert_close(ll, ref.bernoulli_log_prob(logits, bits), **LOSS_TOL[dtype])
    rl = logits.detach().clone().requires_grad_()
    torch.testing.assert_close(d, _grads(ref.bernoulli_log_prob(rl, bits), rl, g)[0].reshape(k * rows, width),
                               **VALUE_TOL[dtype])
    # from probabilities, in the layouts too
    probs = torch.sigmoid(logits.float()).to(dtype)
    a = vaecuda.bernoulli_log_prob_from_probs(probs, bits)
    assert torch.equal(a, vaecuda.bernoulli_log_prob_from_probs(noncontiguous(probs.reshape(-1, width)).unflatten(
        0, (k, rows)), bits))
    torch.testing.assert_close(a, ref.bernoulli_log_prob(probs, bits, probs=True), **LOSS_TOL[dtype])
