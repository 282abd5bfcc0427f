"""Bad input: each raises a clear exception naming the argument and the problem, before any kernel
runs (the global generator is not advanced either)."""

import pytest
import torch

import vaecuda

from conftest import requires_compiled

r = torch.randn


def _expect(exc, match, fn, *args, **kwargs):
    before = torch.get_rng_state()
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)
    assert torch.equal(before, torch.get_rng_state())


LATENT_OPS = [vaecuda.gaussian_kl, vaecuda.reparameterize, vaecuda.reparameterize_with_kl]


@pytest.mark.parametrize("op", LATENT_OPS)
def test_latent_ops(op):
    name = op.__name__
    _expect(ValueError, rf"vaecuda\.{name}: shapes do not broadcast: mu \(4, 3\), logvar \(4, 5\)", op, r(4, 3), r(4, 5))
    _expect(TypeError, r"mu must be float32, float64, float16 or bfloat16, got torch.int64", op,
            torch.ones(4, 3, dtype=torch.int64), r(4, 3))
    _expect(TypeError, r"logvar must be float32, float64, float16 or bfloat16, got torch.int32", op,
            r(4, 3), torch.ones(4, 3, dtype=torch.int32))
    _expect(TypeError, r"logvar has dtype torch.float64 but mu has torch.float32", op, r(4, 3), r(4, 3).double())
    _expect(TypeError, r"mu must be a torch.Tensor, got list", op, [1.0], r(4, 3))
    _expect(ValueError, r"mu must have at least one dim", op, torch.tensor(1.0), torch.tensor(1.0))
    _expect(ValueError, r"logvar is on meta but mu is on cpu", op, r(4, 3), torch.empty(4, 3, device="meta"))


@pytest.mark.parametrize("op", [vaecuda.reparameterize, vaecuda.reparameterize_with_kl])
@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_n_samples(op, bad):
    _expect(ValueError, rf"n_samples must be None or an int >= 1, got {bad!r}", op, r(2, 3), r(2, 3), n_samples=bad)


@pytest.mark.parametrize("op", [vaecuda.reparameterize, vaecuda.reparameterize_with_kl])
def test_seed(op):
    _expect(TypeError, r"seed must be an int, got float", op, r(2, 3), r(2, 3), seed=1.5)
    _expect(ValueError, r"offset must fit in 64 bits", op, r(2, 3), r(2, 3), seed=1, offset=-(2**64))


def test_gaussian_kl_prior_and_options():
    op = vaecuda.gaussian_kl
    _expect(ValueError, r"shapes do not broadcast: mu \(4, 3\), logvar \(4, 3\), prior_mu \(2, 3\)", op,
            r(4, 3), r(4, 3), r(2, 3), r(4, 3))
    _expect(TypeError, r"prior_logvar has dtype torch.float16 but mu has torch.float32", op,
            r(4, 3), r(4, 3), r(4, 3), r(4, 3).half())
    _expect(ValueError, r"reduction must be one of 'none', 'sum', 'mean', got 'max'", op, r(4, 3), r(4, 3),
            reduction="max")
    _expect(ValueError, r"free_bits must be a number >= 0, got -0.1", op, r(4, 3), r(4, 3), reduction="mean",
            free_bits=-0.1)
    _expect(ValueError, r"free_bits must be a number >= 0, got nan", op, r(4, 3), r(4, 3), reduction="mean",
            free_bits=float("nan"))
    _expect(ValueError, r"free_bits needs a batch reduction", op, r(4, 3), r(4, 3), free_bits=0.5)
    _expect(ValueError, r"reparameterize_with_kl: reduction must be one of", vaecuda.reparameterize_with_kl,
            r(4, 3), r(4, 3), reduction="avg")


def test_bernoulli_log_prob():
    op = vaecuda.bernoulli_log_prob
    _expect(TypeError, r"bernoulli_log_prob: logits must be float32, float64, float16 or bfloat16, got torch.int64",
            op, torch.ones(2, 3, dtype=torch.int64), r(2, 3))
    _expect(TypeError, r"target must be a float tensor, bool or uint8, got torch.int64", op, r(2, 3),
            torch.ones(2, 3, dtype=torch.int64))
    _expect(ValueError, r"shapes do not broadcast: logits \(2, 3\), target \(2, 4\)", op, r(2, 3), r(2, 4))
    _expect(ValueError, r"target of shape \(5, 2, 3\) must broadcast to logits' shape \(2, 3\)", op, r(2, 3), r(5, 2, 3))
    _expect(ValueError, r"event_dims must be an int in \[1, logits.dim\(\)=2\], got 3", op, r(2, 3), r(2, 3), event_dims=3)
    _expect(ValueError, r"event_dims must be an int in \[1, logits.dim\(\)=2\], got 0", op, r(2, 3), r(2, 3), event_dims=0)
    _expect(ValueError, r"target is on meta but logits is on cpu", op, r(2, 3), torch.empty(2, 3, device="meta"))
    _expect(ValueError, r"reduction must be one of", op, r(2, 3), r(2, 3), reduction=None)
    _expect(TypeError, r"target must be a torch.Tensor, got float", op, r(2, 3), 1.0)


@requires_compiled
def test_compiled_ops_check_their_inputs_too():
    # torch.ops.vaecuda.* called directly, bypassing the Python wrappers, still refuse bad input
    ops = torch.ops.vaecuda
    with pytest.raises(RuntimeError, match="logvar of shape \\[4, 5\\] does not broadcast with mu"):
        ops.gaussian_kl(r(4, 3), r(4, 5))
    with pytest.raises(RuntimeError, match="pass both prior_mu and prior_logvar, or neither"):
        ops.gaussian_kl(r(4, 3), r(4, 3), r(4, 3), None)
    with pytest.raises(RuntimeError, match="n_samples must be >= 1"):
        ops.reparameterize(r(4, 3), r(4, 3), vaecuda.rng_state(1), 0)
    with pytest.raises(RuntimeError, match="rng_state must be an int64 tensor of two elements"):
        ops.reparameterize(r(4, 3), r(4, 3), torch.zeros(3, dtype=torch.int64), None)
    with pytest.raises(RuntimeError, match="event_dims must be in"):
        ops.bernoulli_log_prob(r(4, 3), r(4, 3), 5)
    with pytest.raises(RuntimeError, match="target must be a float tensor, bool or uint8"):
        ops.bernoulli_log_prob(r(4, 3), torch.ones(4, 3, dtype=torch.int32), 1)


@requires_compiled
def test_backward_ops_check_the_upstream_gradient():
    # a gradient that does not broadcast to the output, or is not float, is refused before any kernel
    ops = torch.ops.vaecuda
    mu, lv = r(4, 3), r(4, 3)
    with pytest.raises(RuntimeError, match=r"grad of shape \[5\] does not broadcast to the output's shape \[4\]"):
        ops.gaussian_kl_backward(r(5), mu, lv, None, None, False, [True, True, False, False])
    with pytest.raises(RuntimeError, match=r"grad of shape \[4\] does not broadcast to the output's shape \[4, 3\]"):
        ops.gaussian_kl_backward(r(4), mu, lv, None, None, True, [True, True, False, False])
    with pytest.raises(RuntimeError, match="grad must be float32, float64, float16 or bfloat16, got Long"):
        ops.gaussian_kl_backward(torch.ones(4, dtype=torch.int64), mu, lv, None, None, False, [True, True, False, False])
    with pytest.raises(RuntimeError, match=r"grad_z of shape \[2, 4, 3\] does not broadcast to the output's shape \[4, 3\]"):
        ops.reparameterize_backward(r(2, 4, 3), None, mu, lv, vaecuda.rng_state(1), None, [True, True])
    with pytest.raises(RuntimeError, match=r"grad_kl of shape \[3\] does not broadcast to the output's shape \[4\]"):
        ops.reparameterize_backward(r(4, 3), r(3), mu, lv, vaecuda.rng_state(1), None, [True, True])
    with pytest.raises(RuntimeError, match=r"grad of shape \[4, 3\] does not broadcast to the output's shape \[4\]"):
        ops.bernoulli_log_prob_backward(r(4, 3), r(4, 3), r(4, 3), 1, False, [True, False])
    # broadcastable gradients are taken
    dmu, _, _, _ = ops.gaussian_kl_backward(r(1), mu, lv, None, None, False, [True, False, False, False])
    assert dmu.shape == mu.shape
