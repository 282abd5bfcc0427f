"""bernoulli_log_prob against the reference, torch.distributions.Bernoulli and float64 gradcheck."""

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Independent

import vaecuda
from vaecuda import reference as ref

from conftest import COMPILED, FLOAT_DTYPES, assert_matches_reference, leaf, noncontiguous, requires_compiled

TARGET_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.bool]


def _logits(shape, dtype, device, scale=3.0, seed=None):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return (torch.randn(shape, generator=g) * scale).to(device, dtype)


def _target(shape, dtype, device, soft=False):
    if soft and dtype.is_floating_point:
        return torch.rand(shape).to(device, dtype)
    return (torch.rand(shape) < 0.4).to(device, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("target_dtype", TARGET_DTYPES)
@pytest.mark.parametrize("shape", [(8, 784), (3, 5), (2, 1, 3000)])
def test_matches_reference(device, dtype, target_dtype, shape):
    logits = _logits(shape, dtype, device)
    x = _target(shape, target_dtype, device, soft=True)
    out = assert_matches_reference(lambda l: vaecuda.bernoulli_log_prob(l, x), lambda l: ref.bernoulli_log_prob(l, x),
                                   [logits], dtype)
    assert out.shape == shape[:-1]


def test_against_torch_distributions(device):
    logits = _logits((16, 4, 28, 28), torch.float64, device)
    x = _target((16, 4, 28, 28), torch.float64, device)
    expected = Independent(Bernoulli(logits=logits), 3).log_prob(x)
    torch.testing.assert_close(vaecuda.bernoulli_log_prob(logits, x, event_dims=3), expected)
    expected1 = Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(vaecuda.bernoulli_log_prob(logits, x), expected1)
    soft = torch.rand_like(x)
    bce = F.binary_cross_entropy_with_logits(logits, soft, reduction="none").sum((-3, -2, -1))
    torch.testing.assert_close(vaecuda.bernoulli_log_prob(logits, soft, event_dims=3), -bce)


def test_target_broadcast_over_samples(device):
    # IWAE: logits [K, B, P], target [B, P] read in place for every sample
    logits = leaf(_logits((5, 6, 40), torch.float32, device))
    x = leaf(torch.rand(6, 40, device=device))
    out = vaecuda.bernoulli_log_prob(logits, x)
    la, xa = leaf(logits), leaf(x)
    expected = ref.bernoulli_log_prob(la, xa)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(logits.grad, la.grad)
    torch.testing.assert_close(x.grad, xa.grad)  # reduced over the sample dim
    # broadcast inside the event: one channel of target against C channels of logits
    lg = _logits((2, 3, 4, 5), torch.float32, device)
    t = _target((2, 1, 4, 5), torch.float32, device)
    torch.testing.assert_close(vaecuda.bernoulli_log_prob(lg, t, event_dims=3), ref.bernoulli_log_prob(lg, t, 3))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
def test_gradcheck_float64(device, seed, layout):
    logits = _logits((3, 11), torch.float64, device, seed=seed)
    x = torch.rand(3, 11, dtype=torch.float64, device=device)
    if layout == "noncontiguous":
        logits, x = noncontiguous(logits), noncontiguous(x)
    logits, x = logits.requires_grad_(), x.requires_grad_()
    assert torch.autograd.gradcheck(lambda l, t: vaecuda.bernoulli_log_prob(l, t), [logits, x])
    assert torch.autograd.gradcheck(lambda l: vaecuda.bernoulli_log_prob(l, (x > 0.5).to(torch.uint8),
                                                                       reduction="sum"), [logits])


def test_event_dims_and_layouts_give_the_same_bits(device):
    logits = _logits((4, 3, 8, 8), torch.float32, device)
    x = _target((4, 3, 8, 8), torch.uint8, device)
    a = vaecuda.bernoulli_log_prob(logits, x, event_dims=3)
    assert torch.equal(a, vaecuda.bernoulli_log_prob(logits.reshape(4, -1), x.reshape(4, -1)))
    cl = logits.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(vaecuda.bernoulli_log_prob(cl, x, event_dims=3), a)
    assert torch.equal(vaecuda.bernoulli_log_prob(noncontiguous(logits), noncontiguous(x), event_dims=3), a)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_reductions(device, reduction):
    logits = _logits((6, 10), torch.float32, device)
    x = _target((6, 10), torch.bool, device)
    per_row = ref.bernoulli_log_prob(logits, x)
    expected = {"none": per_row, "sum": per_row.sum(), "mean": per_row.mean()}[reduction]
    torch.testing.assert_close(vaecuda.bernoulli_log_prob(logits, x, reduction=reduction), expected)


def test_extreme_logits(device):
    logits = leaf(torch.tensor([[1e4, -1e4, 80.0, -80.0, 0.0, 20.0, -20.0, 1e-8]] * 2, device=device))
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.3], [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.3]],
                     device=device)
    out = vaecuda.bernoulli_log_prob(logits, x)
    expected = ref.bernoulli_log_prob(logits.double(), x.double())
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-3)
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()
    torch.testing.assert_close(logits.grad.double(), x.double() - torch.sigmoid(logits.double()), rtol=1e-6, atol=1e-7)
    # log p is exactly 0 when a saturated logit agrees with the pixel
    assert vaecuda.bernoulli_log_prob(torch.tensor([[1e4, -1e4]]), torch.tensor([[1.0, 0.0]])).item() == 0.0


def test_reference_gradient_at_the_kinks(device):
    """The reference (the oracle, and the fallback backend) differentiates max(l, 0) and |l|, kinked at
    l = 0; its gradient must still be x - sigmoid(l) there, as torch's BCE-with-logits and the
    kernels give (autograd's one-sided choices alone would give x - 1)."""
    l = leaf(torch.tensor([[0.0, -0.0, 0.0, 1e-30, -1e-30, 3.0, -3.0, 1e4, -1e4]], device=device, dtype=torch.float64))
    x = torch.tensor([[0.0, 1.0, 0.3, 1.0, 0.0, 0.5, 1.0, 0.0, 1.0]], device=device, dtype=torch.float64)
    out = ref.bernoulli_log_prob(l, x)
    torch.testing.assert_close(out, -F.binary_cross_entropy_with_logits(l, x, reduction="none").sum(-1))
    (grad,) = torch.autograd.grad(out.sum(), [l])
    torch.testing.assert_close(grad, x - torch.sigmoid(l.detach()), rtol=1e-12, atol=1e-12)
    assert grad[0, 0].item() == -0.5 and grad[0, 1].item() == 0.5
    if COMPILED:  # and the kernels agree
        (kgrad,) = torch.autograd.grad(vaecuda.bernoulli_log_prob(l, x).sum(), [l])
        torch.testing.assert_close(kgrad, grad, rtol=1e-12, atol=1e-12)


def test_nan_propagates(device):
    logits = _logits((3, 6), torch.float32, device)
    logits[1, 2] = float("nan")
    x = _target((3, 6), torch.float32, device)
    logits = leaf(logits)
    out = vaecuda.bernoulli_log_prob(logits, x)
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
    out.sum().backward()
    assert torch.isnan(logits.grad[1, 2])
    assert torch.isnan(vaecuda.bernoulli_log_prob(torch.zeros(1, 3), torch.tensor([[0.0, float("nan"), 1.0]]))).all()



def test_infinite_logits_are_never_finite(device):
    """+-inf logits give NaN or -inf (never a finite number that hides them), the reference's pattern."""
    inf = float("inf")
    logits = torch.tensor([[inf], [inf], [inf], [-inf], [-inf], [-inf]], device=device)
    x = torch.tensor([[0.0], [0.5], [1.0], [0.0], [0.5], [1.0]], device=device)
    out = vaecuda.bernoulli_log_prob(logits, x)
    assert not torch.isfinite(out).any() and (torch.isnan(out) | (out == -inf)).all()
    torch.testing.assert_close(out, ref.bernoulli_log_prob(logits, x, 1), equal_nan=True)

def test_empty(device):
    logits = torch.zeros(0, 784, device=device, requires_grad=True)
    out = vaecuda.bernoulli_log_prob(logits, torch.zeros(0, 784, device=device))
    assert out.shape == (0,)
    out.sum().backward()
    assert logits.grad.shape == (0, 784)
    assert vaecuda.bernoulli_log_prob(torch.zeros(3, 0, device=device), torch.zeros(3, 0, device=device)).tolist() == [0] * 3


def test_gradient_only_where_asked(device):
    logits = leaf(_logits((4, 9), torch.float32, device))
    x = torch.rand(4, 9, device=device)  # no requires_grad: no target gradient computed
    vaecuda.bernoulli_log_prob(logits, x).sum().backward()
    assert x.grad is None and logits.grad is not None
    x = leaf(x)
    vaecuda.bernoulli_log_prob(logits.detach(), x).sum().backward()
    torch.testing.assert_close(x.grad, logits.detach())


@requires_compiled
@pytest.mark.parametrize("probs", [False, True])
def test_gradient_from_the_forward_equals_the_backward_op(device, probs):
    """With logits requiring grad the forward also writes d/dlogits and the backward multiplies it by
    the upstream gradient; that equals the backward op (used under create_graph=True) bit for bit."""
    l = torch.rand(6, 2, 50, device=device) if probs else _logits((6, 2, 50), torch.float32, device)
    x = _target((2, 50), torch.float32, device, soft=True)
    g = torch.randn(6, 2, device=device)
    a = leaf(l)
    fn = vaecuda.bernoulli_log_prob_from_probs if probs else vaecuda.bernoulli_log_prob
    (got,) = torch.autograd.grad(fn(a, x), [a], g)
    want = torch.ops.vaecuda.bernoulli_log_prob_backward(g, l, x, 1, probs, [True, False])[0]
    assert torch.equal(got, want)
    b = leaf(l)
    (graph_grad,) = torch.autograd.grad(fn(b, x), [b], g, create_graph=True)  # the backward op's path
    assert torch.equal(graph_grad.detach(), want)


@requires_compiled
def test_no_saved_gradient_without_grad_mode(device):
    """Under no_grad nothing will differentiate the result: the forward writes no d/dlogits."""
    l, x = leaf(_logits((4, 30), torch.float32, device)), _target((4, 30), torch.float32, device)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        vaecuda.bernoulli_log_prob(l, x)
    names = {e.name for e in prof.events()}
    assert "vaecuda::bernoulli_log_prob" in names and "vaecuda::_bernoulli_log_prob_and_grad" not in names


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_retained_graph_backward_twice(device, dtype):
    """Without retain_graph the backward scales the forward's saved d/dlogits in place (float32); with
    it the saved buffer must survive, so a second backward gives the same gradient again. bfloat16
    logits take the backward op instead: the same contract."""
    l = leaf(_logits((5, 3, 40), dtype, device))
    x = _target((3, 40), torch.float32, device, soft=True)
    g1, g2 = torch.randn(5, 3, device=device), torch.randn(5, 3, device=device)
    out = vaecuda.bernoulli_log_prob(l, x)
    (first,) = torch.autograd.grad(out, [l], g1, retain_graph=True)
    (again,) = torch.autograd.grad(out, [l], g1, retain_graph=True)
    (other,) = torch.autograd.grad(out, [l], g2)  # last pass frees the graph: the in-place path
    ref_grad = torch.autograd.grad(ref.bernoulli_log_prob(l, x), [l], g1)[0]
    want2 = torch.autograd.grad(ref.bernoulli_log_prob(l, x), [l], g2)[0]
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    assert torch.equal(first, again)
    torch.testing.assert_close(first, ref_grad, **tol)
    torch.testing.assert_close(other, want2, **tol)
    assert first.dtype == other.dtype == dtype
    assert not torch.equal(first, other)
