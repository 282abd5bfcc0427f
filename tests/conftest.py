"""Shared helpers: devices under test, per-dtype tolerances, input makers."""

import pytest
import torch

import vaecuda
from vaecuda import _backend

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Tolerances against vaecuda.reference. Losses are computed and returned in float32 for half inputs,
# so they get float32 tolerances; samples and gradients are stored in the input dtype, and may differ
# from the reference by one rounding of that dtype.
LOSS_TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.float16: dict(rtol=2e-5, atol=2e-5),
    torch.bfloat16: dict(rtol=2e-5, atol=2e-5),
}
VALUE_TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}

COMPILED = _backend._C is not None and _backend.MODE != "reference"


def devices():
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    return out


requires_compiled = pytest.mark.skipif(not COMPILED, reason="the compiled extension is not loaded")


@pytest.fixture(params=devices())
def device(request):
    return request.param


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout (every other column of a wider tensor)."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    out = wide[..., ::2]
    assert not out.is_contiguous() or t.numel() <= 1
    return out.requires_grad_(t.requires_grad)


def leaf(t: torch.Tensor, requires_grad=True) -> torch.Tensor:
    return t.detach().clone().requires_grad_(requires_grad)


def assert_matches_reference(fn, reference, inputs, dtype: torch.dtype) -> torch.Tensor:
    """fn(*inputs) and reference(*inputs) on copies (None stays None): values within LOSS_TOL, and for
    one random upstream gradient, gradients in the inputs' dtype within VALUE_TOL. Returns fn's output."""
    ours = [None if t is None else leaf(t) for t in inputs]
    theirs = [None if t is None else leaf(t) for t in inputs]
    out, expected = fn(*ours), reference(*theirs)
    torch.testing.assert_close(out, expected, **LOSS_TOL[dtype])
    g = torch.randn_like(out)
    out.backward(g)
    expected.backward(g)
    for a, b in zip(ours, theirs):
        if a is not None:
            assert a.grad.dtype == a.dtype
            torch.testing.assert_close(a.grad, b.grad, **VALUE_TOL[dtype])
    return out


@pytest.fixture(scope="session")
def binary_npz(tmp_path_factory):
    """A small binarized-image data set in the .npz format (no download, no scikit-learn): 8x8 images
    drawn around 10 random prototypes with 10% of pixels flipped."""
    import numpy as np
    rng = np.random.default_rng(0)
    protos = rng.random((10, 64)) < 0.35

    def draw(n):
        x = protos[rng.integers(0, 10, n)] ^ (rng.random((n, 64)) < 0.1)
        return x.astype(np.uint8)

    path = tmp_path_factory.mktemp("data") / "toy.npz"
    np.savez(path, train=draw(600), valid=draw(100), test=draw(100))
    return str(path)
