"""Property-based tests (hypothesis): random shapes, strides, dtypes, broadcasting and values, each
op and its gradients against vaecuda.reference. About 3,600 cases per run."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vaecuda
from vaecuda import reference as ref

from conftest import FLOAT_DTYPES, LOSS_TOL, VALUE_TOL

SETTINGS = settings(max_examples=1200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def shapes(draw, min_dims=1, max_dims=4):
    nd = draw(st.integers(min_dims, max_dims))
    batch = draw(st.lists(st.integers(0, 5), min_size=nd - 1, max_size=nd - 1))
    return tuple(batch) + (draw(st.integers(1, 70)),)


@st.composite
def operand(draw, shape, dtype, scale=3.0, broadcast=True):
    """A tensor that broadcasts to `shape` (or has it), in a random layout, with random values."""
    sub = list(shape)
    if broadcast and draw(st.booleans()):  # broadcast: drop leading dims and/or set some dims to 1
        sub = sub[draw(st.integers(0, len(sub) - 1)):]
        sub = [1 if draw(st.booleans()) and i < len(sub) - 1 else s for i, s in enumerate(sub)]
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    layout = draw(st.sampled_from(["contiguous", "strided", "transposed"]))
    if layout == "strided":
        big = torch.randn(*sub[:-1], 3 * sub[-1], generator=g) * scale
        t = big[..., ::3]
    elif layout == "transposed" and len(sub) >= 2:
        t = (torch.randn(*reversed(sub), generator=g) * scale).permute(*reversed(range(len(sub))))
    else:
        t = torch.randn(*sub, generator=g) * scale
    return t.to(dtype)


def _grads_close(outs, ref_outs, inputs, ref_inputs, dtype):
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(o.shape, generator=g).to(o.dtype) for o in outs]
    got = torch.autograd.grad(outs, inputs, weights, allow_unused=True)
    expected = torch.autograd.grad(ref_outs, ref_inputs, weights, allow_unused=True)
    for a, b in zip(got, expected):
        # gradients mix terms of very different sizes (e^lv with lv ~ N(0, 9)) that partly cancel:
        # compare against the largest entry's scale, not each entry's own
        tol = VALUE_TOL[dtype]
        scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * scale)


@SETTINGS
@given(data=st.data(), shape=shapes(), dtype=st.sampled_from(FLOAT_DTYPES), prior=st.booleans())
def test_gaussian_kl(data, shape, dtype, prior):
    ts = [data.draw(operand(shape, dtype)) for _ in range(4 if prior else 2)]
    a = [t.clone().requires_grad_() if t.is_contiguous() else t.requires_grad_() for t in ts]
    b = [t.detach().clone().requires_grad_() for t in ts]
    out = vaecuda.gaussian_kl(*a)
    expected = ref.gaussian_kl(*b) if prior else ref.gaussian_kl(*b)
    torch.testing.assert_close(out, expected, **LOSS_TOL[dtype])
    if out.numel():
        _grads_close([out], [expected], a, b, dtype)


@SETTINGS
@given(data=st.data(), shape=shapes(), dtype=st.sampled_from(FLOAT_DTYPES),
       n_samples=st.sampled_from([None, 1, 2, 3]), with_kl=st.booleans(), seed=st.integers(-(2**63), 2**64 - 1))
def test_reparameterize(data, shape, dtype, n_samples, with_kl, seed):
    ts = [data.draw(operand(shape, dtype, scale=1.0)) for _ in range(2)]
    a = [t.detach().requires_grad_() for t in ts]
    b = [t.detach().clone().requires_grad_() for t in ts]
    state = vaecuda.rng_state(seed)
    if with_kl:
        outs = list(vaecuda.reparameterize_with_kl(*a, n_samples=n_samples, seed=seed))
        ref_outs = list(ref.reparameterize_with_kl(*b, state, n_samples))
    else:
        outs = [vaecuda.reparameterize(*a, n_samples=n_samples, seed=seed)]
        ref_outs = [ref.reparameterize(*b, state, n_samples)]
    torch.testing.assert_close(outs[0], ref_outs[0], **VALUE_TOL[dtype])
    if with_kl:
        torch.testing.assert_close(outs[1], ref_outs[1], **LOSS_TOL[dtype])
    if outs[0].numel():
        _grads_close(outs, ref_outs, a, b, dtype)


@SETTINGS
@given(data=st.data(), shape=shapes(max_dims=4), dtype=st.sampled_from(FLOAT_DTYPES),
       target_dtype=st.sampled_from(FLOAT_DTYPES + [torch.uint8, torch.bool]), scale=st.sampled_from([1.0, 10.0, 1e3]))
def test_bernoulli_log_prob(data, shape, dtype, target_dtype, scale):
    event_dims = data.draw(st.integers(1, len(shape)))
    logits = data.draw(operand(shape, dtype, scale=scale, broadcast=False)).requires_grad_()
    x = data.draw(operand(shape, torch.float32))
    x = torch.sigmoid(x).to(target_dtype) if target_dtype.is_floating_point else (x > 0).to(target_dtype)
    x_grad = target_dtype.is_floating_point and data.draw(st.booleans())  # soft targets may require grad
    xa, xb = (x.detach().clone().requires_grad_(x_grad) for _ in range(2))
    b = logits.detach().clone().requires_grad_()
    out = vaecuda.bernoulli_log_prob(logits, xa, event_dims=event_dims)
    expected = ref.bernoulli_log_prob(b, xb, event_dims)
    tol = LOSS_TOL[dtype] if scale < 1e3 else dict(rtol=2e-5, atol=1e-2)  # sums of terms of 1e3
    torch.testing.assert_close(out, expected, **tol)
    if out.numel():
        # d/dtarget = g * logits, in the target's dtype: the coarser of the two tolerances
        coarse = max((dtype, target_dtype) if x_grad else (dtype,), key=lambda t: VALUE_TOL[t]["rtol"])
        _grads_close([out], [expected], [logits, xa] if x_grad else [logits], [b, xb] if x_grad else [b], coarse)
