"""CUDA-only checks (skipped without a GPU; run by benchmarks/gpu_check.sh). The op tests in the
other files also run on CUDA when a GPU is there (the `device` fixture)."""

import pytest
import torch

import vaecuda
from vaecuda import reference as ref

from conftest import COMPILED

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and COMPILED and vaecuda.backend_info()["build"]
                                     and vaecuda.backend_info()["build"]["cuda"]),
                                reason="needs a CUDA device and the CUDA kernels")


@pytest.mark.parametrize("seed,offset", [(0, 0), (123456789, 7), (-1, 2**62)])
@pytest.mark.parametrize("first,count", [(0, 100003), (5, 1000), (2**33 + 3, 77)])
def test_noise_equals_cpu_bitwise(seed, offset, first, count):
    state = vaecuda.rng_state(seed, offset)
    cpu = torch.ops.vaecuda._normals(state, first, count)
    gpu = torch.ops.vaecuda._normals(state.cuda(), first, count).cpu()
    assert torch.equal(cpu, gpu)


def test_samples_agree_with_cpu_kernels():
    g = torch.Generator().manual_seed(0)
    mu, lv = torch.randn(300, 50, generator=g), torch.randn(300, 50, generator=g)
    a = vaecuda.reparameterize(mu, lv, n_samples=3, seed=9)
    b = vaecuda.reparameterize(mu.cuda(), lv.cuda(), n_samples=3, seed=9).cpu()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # same noise bits; exp may differ in an ulp


def test_mismatched_devices_are_refused():
    with pytest.raises(ValueError, match="logvar is on cpu but mu is on cuda"):
        vaecuda.gaussian_kl(torch.randn(3, 4, device="cuda"), torch.randn(3, 4))
    with pytest.raises(ValueError, match="target is on cpu but logits is on cuda"):
        vaecuda.bernoulli_log_prob(torch.randn(3, 4, device="cuda"), torch.rand(3, 4))


def test_cuda_graph_replays_with_fresh_noise():
    mu = torch.randn(64, 16, device="cuda")
    lv = torch.randn(64, 16, device="cuda")
    static = {}
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            vaecuda.reparameterize(mu, lv)  # warm-up
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static["z"] = vaecuda.reparameterize(mu, lv)
    graph.replay()
    first = static["z"].clone()
    graph.replay()
    second = static["z"].clone()
    assert not torch.equal(first, second)  # the rng_state draw is part of the graph
    for z in (first, second):  # and each replay is a proper sample
        eps = (z - mu) / torch.exp(0.5 * lv)
        assert abs(eps.mean().item()) < 0.1 and abs(eps.std().item() - 1) < 0.1


def test_cuda_graph_with_fixed_seed_matches_eager():
    mu = torch.randn(32, 8, device="cuda", requires_grad=True)
    lv = torch.randn(32, 8, device="cuda", requires_grad=True)
    expected = vaecuda.reparameterize(mu, lv, seed=5).detach()
    state = vaecuda.rng_state(5, device="cuda")  # made outside the graph, read by the kernel inside it
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad():
        vaecuda.reparameterize(mu, lv, seed=state)
        with torch.cuda.graph(graph):
            z = vaecuda.reparameterize(mu, lv, seed=state)
    graph.replay()
    assert torch.equal(z, expected)
    state.copy_(vaecuda.rng_state(6, device="cuda"))  # a new key, same graph
    graph.replay()
    assert torch.equal(z, vaecuda.reparameterize(mu, lv, seed=6).detach())


def test_large_row_counts_and_reference():
    mu = torch.randn(70000, 20, device="cuda")
    lv = torch.randn(70000, 20, device="cuda")
    torch.testing.assert_close(vaecuda.gaussian_kl(mu, lv), ref.gaussian_kl(mu, lv), rtol=1e-5, atol=1e-5)
