"""bernoulli_log_prob_from_probs against the reference, F.binary_cross_entropy (values and gradients,
the -100 clamp and the 1e-12 guard included) and float64 gradcheck."""

import pytest
import torch
import torch.nn.functional as F

import vaecuda
from vaecuda import reference as ref

from conftest import FLOAT_DTYPES, assert_matches_reference, leaf, noncontiguous

op = vaecuda.bernoulli_log_prob_from_probs


def _probs(shape, dtype, device, seed=None):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.sigmoid(torch.randn(shape, generator=g) * 2).clamp(0.02, 0.98).to(device, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("target_dtype", [torch.float32, torch.bfloat16, torch.uint8, torch.bool])
@pytest.mark.parametrize("shape", [(8, 784), (3, 5), (2, 1, 300)])
def test_matches_reference(device, dtype, target_dtype, shape):
    p = _probs(shape, dtype, device)
    x = (torch.rand(shape) < 0.4).to(device, target_dtype)
    out = assert_matches_reference(lambda q: op(q, x), lambda q: ref.bernoulli_log_prob(q, x, 1, probs=True), [p], dtype)
    assert out.shape == shape[:-1] and out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_equals_binary_cross_entropy(device):
    """The canonical PyTorch VAE loss, F.binary_cross_entropy(recon, x, reduction="sum"): same value,
    same gradients for the probabilities and for soft targets, in float64."""
    p = leaf(_probs((16, 784), torch.float64, device, seed=0))
    x = leaf(torch.rand(16, 784, dtype=torch.float64, device=device))
    ours = -op(p, x, reduction="sum")
    pa, xa = leaf(p), leaf(x)
    theirs = F.binary_cross_entropy(pa, xa, reduction="sum")
    torch.testing.assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(p.grad, pa.grad)
    torch.testing.assert_close(x.grad, xa.grad)


def test_saturated_probabilities_like_torch(device):
    """p = 0 or 1 (a saturated sigmoid): log terms clamp at -100, gradients use torch's 1e-12 guard."""
    p = leaf(torch.tensor([[0.0, 1.0, 0.0, 1.0, 1e-30, 1 - 1e-7, 0.5]], device=device))
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.3]], device=device)
    out = op(p, x)
    pa = leaf(p)
    expected = -F.binary_cross_entropy(pa, x, reduction="none").sum(-1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    expected.sum().backward()
    assert torch.isfinite(p.grad).all()
    torch.testing.assert_close(p.grad, pa.grad)
    assert out.item() < -200  # two pixels at the clamp


def test_reference_gradient_at_saturated_probabilities():
    """The fallback (vaecuda.reference) has torch's gradient guard too: finite at p = 0 or 1."""
    p = leaf(torch.tensor([[1.0, 0.0, 0.3, 1e-30]], dtype=torch.float64))
    x = leaf(torch.tensor([[1.0, 0.0, 1.0, 1.0]], dtype=torch.float64))
    ours = ref.bernoulli_log_prob(p, x, 1, probs=True)
    pa, xa = leaf(p), leaf(x)
    theirs = -F.binary_cross_entropy(pa, xa, reduction="none").sum(-1)
    torch.testing.assert_close(ours, theirs)
    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(p.grad, pa.grad)
    # the target's gradient is that of the clamped terms (finite, as the kernels'); torch's is the
    # unclamped log ratio, infinite at p = 0 or 1, so compare where nothing saturates
    torch.testing.assert_close(x.grad[:, 2:], xa.grad[:, 2:])
    assert torch.isfinite(x.grad).all() and x.grad[0, 0] == 100 and x.grad[0, 1] == -100
    assert torch.isnan(ref.bernoulli_log_prob(torch.tensor([[1.5]]), torch.tensor([[1.0]]), 1, probs=True)).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
def test_gradcheck_float64(device, seed, layout):
    p = _probs((3, 11), torch.float64, device, seed=seed)
    x = torch.rand(3, 11, dtype=torch.float64, device=device)
    if layout == "noncontiguous":
        p, x = noncontiguous(p), noncontiguous(x)
    p, x = p.requires_grad_(), x.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, t: op(a, t), [p, x])


def test_broadcast_event_dims_and_reductions(device):
    p = leaf(_probs((5, 6, 1, 8, 8), torch.float32, device))
    x = (torch.rand(6, 1, 8, 8, device=device) < 0.5)
    out = op(p, x, event_dims=3)
    pa = leaf(p)
    expected = ref.bernoulli_log_prob(pa, x, 3, probs=True)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(p.grad, pa.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(op(p, x, event_dims=3, reduction="mean"), expected.mean())


def test_nan_and_out_of_range_propagate(device):
    p = leaf(torch.tensor([[0.3, float("nan")], [0.3, 1.5], [0.3, -0.1], [0.3, 0.7]], device=device))
    out = op(p, torch.ones(4, 2, device=device) * 0.5)
    assert torch.isnan(out[:3]).all() and torch.isfinite(out[3])
    out.sum().backward()
    assert torch.isnan(p.grad[0, 1])


def test_bad_input():
    with pytest.raises(TypeError, match="vaecuda.bernoulli_log_prob_from_probs: probs must be float32"):
        op(torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"must broadcast to probs' shape \(2, 3\)"):
        op(torch.rand(2, 3), torch.rand(4, 2, 3))
    with pytest.raises(ValueError, match=r"event_dims must be an int in \[1, probs.dim\(\)=2\]"):
        op(torch.rand(2, 3), torch.rand(2, 3), event_dims=3)
