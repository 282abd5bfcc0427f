"""The reference VAEs: objectives on the fused ops equal the same objectives on the reference ops (same
noise), the uses (log-likelihood, sample, reconstruct, active units) and their shapes."""

import math

import pytest
import torch

import vaecuda
from vaecuda import models
from vaecuda.models import VAE, ConvVAE


def binary(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < 0.3).float()


def twin(model):
    """The same weights with the loss math on the reference ops."""
    other = type(model)(**{k: v for k, v in model.config().items() if k != "arch"}, ops="reference")
    other.load_state_dict(model.state_dict())
    return other


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("make,x", [
    (lambda: VAE(64, (32,), 8), binary(16, 64)),
    (lambda: VAE.iwae_paper(64), binary(16, 64)),
    (lambda: ConvVAE((1, 8, 8), channels=4, latent=6), binary(16, 1, 8, 8)),
])
@pytest.mark.parametrize("objective", ["loss", "elbo", "iwae", "free_bits"])
def test_fused_equals_reference(make, x, objective):
    torch.manual_seed(1)
    fused = make()
    ref = twin(fused)
    run = {
        "loss": lambda m: m.loss(x, beta=0.7, seed=5),
        "elbo": lambda m: m.elbo(x, seed=5).sum(),
        "iwae": lambda m: m.iwae(x, k=7, seed=5).sum(),
        "free_bits": lambda m: m.loss(x, free_bits=0.5, seed=5),
    }[objective]
    a, b = run(fused), run(ref)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    # fp32 ops that agree to an ulp or two, through a net and IWAE's softmax weights: a 16-thread
    # AVX-512 host (the H200 machine) showed 1.9e-5 in one bias gradient
    for ga, gb in zip(grads(fused), grads(ref)):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("free_bits", [0.0, 0.3])
def test_eager_ops_same_numbers_for_a_seed(free_bits):
    """With an int seed the eager idiom draws vaecuda's noise: all three give the same loss and grads;
    without one it draws torch.randn (other noise, another loss)."""
    torch.manual_seed(2)
    m = VAE(20, (16,), 4)
    x = binary(8, 20)
    values = []
    for ops in models.LOSS_OPS:
        m.ops = ops
        m.zero_grad()
        loss = m.loss(x, seed=3, free_bits=free_bits)
        loss.backward()
        values.append((loss.detach(), grads(m)))
    for loss, gs in values[1:]:
        torch.testing.assert_close(loss, values[0][0], rtol=1e-5, atol=1e-4)
        for a, b in zip(gs, values[0][1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    m.ops = "eager"
    assert not torch.equal(m.loss(x), m.loss(x))


def test_free_bits_clamps_each_dim():
    torch.manual_seed(3)
    m = VAE(20, (16,), 4)
    x = binary(8, 20)
    big = 50.0  # every dim's KL is below 50 nats: the KL term is 4 * 50 whatever the weights
    loss = m.loss(x, free_bits=big, seed=1)
    log_px = vaecuda.bernoulli_log_prob(m.decode(vaecuda.reparameterize(*m.encode(x), seed=1)), x).mean()
    torch.testing.assert_close(loss, 4 * big - log_px)
    loss.backward()  # no gradient reaches the encoder's logvar through the clamped KL: only through z
    assert all(p.grad is not None for p in m.parameters())


def test_iwae_bound_tightens_with_k():
    torch.manual_seed(4)
    m = VAE(30, (16,), 5)
    x = binary(64, 30)
    with torch.no_grad():
        k1 = m.iwae(x, k=1, seed=0).mean()
        k100 = m.iwae(x, k=100, seed=0).mean()
        elbo = m.elbo(x, seed=0).mean()
    # fixed seeds: deterministic. Jensen: E[IWAE_k] grows with k; at k=1 it is an ELBO estimate.
    assert k100 > k1
    assert abs(float(k1 - elbo)) < 0.1 * abs(float(elbo))


@torch.no_grad()
def _by_hand(m, x, chunk, keys):
    """log p(x) from chunks of `chunk` samples, chunk c keyed by keys[c]."""
    mu, lv = m.encode(x)
    lw = torch.cat([m._log_weights(x, mu, lv, chunk, key) for key in keys])
    return torch.logsumexp(lw, 0) - math.log(chunk * len(keys))


def test_log_likelihood_chunks():
    torch.manual_seed(5)
    m = VAE(30, (16,), 5)
    x = binary(6, 30)
    k, chunk = 40, 8
    got = m.log_likelihood(x, k=k, max_elements=chunk * x.numel(), seed=9)
    # chunk c of 8 samples keyed by (seed 9, offset c)
    torch.testing.assert_close(got, _by_hand(m, x, chunk, [vaecuda.rng_state(9, c) for c in range(k // chunk)]))
    # the chunking is invisible in distribution: one big chunk gives a close estimate
    whole = m.log_likelihood(x, k=k, seed=9)
    assert torch.allclose(got, whole, atol=2.0)
    assert got.dtype == torch.float32 and got.shape == (6,)


def test_log_likelihood_chunks_with_a_key_tensor():
    """A key tensor (seed, offset): chunk c uses (seed, offset + c), so more samples are more draws."""
    torch.manual_seed(5)
    m = VAE(30, (16,), 5)
    x = binary(6, 30)
    key = vaecuda.rng_state(9, 100)
    small = m.log_likelihood(x, k=5, max_elements=5 * x.numel(), seed=key)
    big = m.log_likelihood(x, k=50, max_elements=5 * x.numel(), seed=key)
    assert not torch.allclose(small, big)
    torch.testing.assert_close(big, _by_hand(m, x, 5, [vaecuda.rng_state(9, 100 + c) for c in range(10)]))
    assert key.tolist() == [9, 100]  # the caller's key is left as it was


def test_log_likelihood_above_elbo():
    torch.manual_seed(6)
    m = VAE(30, (16,), 5)
    x = binary(64, 30)
    with torch.no_grad():
        ll = m.log_likelihood(x, k=500, seed=0).mean()
        elbo = m.elbo(x, seed=0).mean()
    assert ll > elbo


def test_uses_shapes():
    torch.manual_seed(7)
    for m, x in ((VAE(64, (32,), 8), binary(5, 64)), (ConvVAE((1, 8, 8), 4, 6), binary(5, 1, 8, 8)),
                 (ConvVAE((1, 28, 28), 4, 6), binary(5, 1, 28, 28))):
        assert m.sample(3).shape == (3, *m.event_shape)
        s = m.sample(3)
        assert ((s >= 0) & (s <= 1)).all()
        assert m.reconstruct(x).shape == x.shape
        mu, lv = m.encode(x)
        assert mu.shape == lv.shape == (5, m.latent)
        assert m.iwae(x, k=3).shape == (5,)


def test_active_units():
    torch.manual_seed(8)
    m = VAE(30, (16,), 6)
    x = binary(200, 30)
    with torch.no_grad():
        head = m.encoder[-1]
        head.weight[:6] *= 0
        head.weight[:2] = torch.randn(2, 16) * 3  # mu_0, mu_1 vary; mu_2..5 are constant
    assert m.active_units(x) == 2
    assert m.active_units([x[:100], x[100:]]) == 2
    assert m.active_units(x, threshold=1e9) == 0


def test_bad_input():
    m = VAE(64, (32,), 8)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 64\]"):
        m.loss(binary(4, 63))
    with pytest.raises(ValueError, match="ops must be one of"):
        VAE(ops="triton")
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvVAE((1, 10, 10))
    with pytest.raises(ValueError, match="activation"):
        VAE(activation="swish2")
    with pytest.raises(ValueError, match="k must be"):
        m.iwae(binary(4, 64), k=0)
    with pytest.raises(ValueError, match="at least 2"):
        m.active_units(binary(1, 64))
