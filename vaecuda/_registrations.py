"""Fake (meta) kernels of the compiled ops, so torch.compile, AOTAutograd and opcheck can trace them
without running them. Autograd is registered in C++ (csrc/autograd.cpp)."""

from __future__ import annotations

import torch

from .reference import _acc_dtype


def _grad_or_empty(wanted: bool, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """A gradient shaped like `like`, or the empty placeholder the kernels return when not wanted."""
    return like.new_empty(like.shape if wanted else (0,), dtype=dtype)


def _shape_of(*tensors) -> torch.Size:
    return torch.broadcast_shapes(*(t.shape for t in tensors if t is not None))


@torch.library.register_fake("vaecuda::gaussian_kl")
def _gaussian_kl(mu, logvar, prior_mu=None, prior_logvar=None, elementwise=False):
    shape = _shape_of(mu, logvar, prior_mu, prior_logvar)
    return mu.new_empty(shape if elementwise else shape[:-1], dtype=_acc_dtype(mu.dtype))


@torch.library.register_fake("vaecuda::_gaussian_kl_and_grad")
def _gaussian_kl_and_grad(mu, logvar, elementwise):
    return _gaussian_kl(mu, logvar, elementwise=elementwise), mu.new_empty(_shape_of(mu, logvar))


@torch.library.register_fake("vaecuda::gaussian_kl_backward")
def _gaussian_kl_backward(grad, mu, logvar, prior_mu, prior_logvar, elementwise, output_mask):
    inputs = (mu, logvar, prior_mu, prior_logvar)
    return tuple(_grad_or_empty(m and t is not None, t if t is not None else mu) for m, t in zip(output_mask, inputs))


def _z_shape(mu, logvar, n_samples):
    shape = _shape_of(mu, logvar)
    return shape if n_samples is None else (n_samples, *shape)


@torch.library.register_fake("vaecuda::reparameterize")
def _reparameterize(mu, logvar, rng_state, n_samples=None):
    return mu.new_empty(_z_shape(mu, logvar, n_samples))


@torch.library.register_fake("vaecuda::reparameterize_with_kl")
def _reparameterize_with_kl(mu, logvar, rng_state, n_samples=None):
    z_shape = _z_shape(mu, logvar, n_samples)
    kl_shape = _shape_of(mu, logvar)[:-1]
    return mu.new_empty(z_shape), mu.new_empty(kl_shape, dtype=_acc_dtype(mu.dtype))


@torch.library.register_fake("vaecuda::reparameterize_backward")
def _reparameterize_backward(grad_z, grad_kl, mu, logvar, rng_state, n_samples, output_mask):
    return _grad_or_empty(output_mask[0], mu), _grad_or_empty(output_mask[1], logvar, dtype=mu.dtype)


@torch.library.register_fake("vaecuda::bernoulli_log_prob")
def _bernoulli_log_prob(logits, target, event_dims=1, probs=False):
    return logits.new_empty(logits.shape[:logits.dim() - event_dims], dtype=_acc_dtype(logits.dtype))


@torch.library.register_fake("vaecuda::_bernoulli_log_prob_and_grad")
def _bernoulli_log_prob_and_grad(logits, target, event_dims, probs):
    return _bernoulli_log_prob(logits, target, event_dims, probs), logits.new_empty(logits.shape)


@torch.library.register_fake("vaecuda::bernoulli_log_prob_backward")
def _bernoulli_log_prob_backward(grad, logits, target, event_dims, probs, output_mask):
    d_target = output_mask[1] and target.dtype.is_floating_point
    return _grad_or_empty(output_mask[0], logits), _grad_or_empty(d_target, target)


@torch.library.register_fake("vaecuda::_normals")
def _normals(rng_state, first, count):
    return rng_state.new_empty((count,), dtype=torch.float32)


@torch.library.register_fake("vaecuda::_scale")
def _scale(x, alpha):
    return torch.empty_like(x)
