"""Tensors of more than 2^31 elements: the kernels index with 64 bits (flat noise index, output offsets,
row counts), so the elements past 2^31 are as right as the first ones. float16 keeps each tensor at
4.3 GB; skipped where the device has less than 12 GB free."""

import os

import pytest
import torch

import vaecuda
from vaecuda import reference as ref

from conftest import requires_compiled

B, D = 1024, 1024            # 2^20 elements per sample
K = 2049                     # K * B * D = 2^31 + 2^20: the last sample lies wholly past 2^31
NEED = 12 << 30


def _free_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def big_device(device):
    if _free_bytes(device) < NEED:
        pytest.skip(f"needs {NEED >> 30} GB free on {device}")
    return device


@requires_compiled
def test_sampling_past_2_31_elements(big_device):
    dev = big_device
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(B, D, generator=g).to(dev, torch.float16)
    lv = (0.5 * torch.randn(B, D, generator=g)).to(dev, torch.float16).requires_grad_()
    state = vaecuda.rng_state(7, device=dev)
    z = vaecuda.reparameterize(mu, lv, n_samples=K, seed=state)
    assert z.shape == (K, B, D) and z.numel() > 2**31
    last = (K - 1) * B * D  # flat index of the last sample's first element, > 2^31
    eps_last = torch.ops.vaecuda._normals(state, last, B * D).view(B, D)
    sd = torch.exp(lv.detach().float() / 2)
    torch.testing.assert_close(z[-1].float(), mu.float() + sd * eps_last, rtol=2e-3, atol=2e-3)
    eps_first = torch.ops.vaecuda._normals(state, 0, B * D).view(B, D)
    torch.testing.assert_close(z[0].float(), mu.float() + sd * eps_first, rtol=2e-3, atol=2e-3)
    # backward: an upstream gradient that is 1 on the last sample only (a stride-0 view, no memory),
    # so d logvar = sd * eps_last / 2, regenerated at flat indices past 2^31
    onehot = torch.zeros(K, 1, 1, device=dev, dtype=torch.float16)
    onehot[-1] = 1
    (dlv,) = torch.autograd.grad(z, [lv], onehot.expand(K, B, D))
    torch.testing.assert_close(dlv.float(), sd * eps_last / 2, rtol=2e-3, atol=2e-3)


@requires_compiled
def test_bernoulli_past_2_31_elements(big_device):
    dev = big_device
    g = torch.Generator().manual_seed(1)
    base = (2 * torch.randn(1, B, D, generator=g)).to(dev, torch.float16)
    target = torch.rand(B, D, generator=g).to(dev) < 0.3        # bool, broadcast over the K samples
    logits = base.expand(K, B, D).contiguous()                     # every sample the same logits
    assert logits.numel() > 2**31
    ll = vaecuda.bernoulli_log_prob(logits, target)
    assert ll.shape == (K, B)
    torch.testing.assert_close(ll[0], ref.bernoulli_log_prob(base[0], target), rtol=2e-5, atol=2e-5)
    assert torch.equal(ll[-1], ll[0])  # same row, same bits, read from past 2^31
