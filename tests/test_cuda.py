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
    # the same noise bits; sd = e^(logvar / 2) is the CPU's polynomial there and CUDA's expf here (each
    # within 2 ulp of e^x), and the GPU fuses mu + sd * eps: z agrees to a few ulp of its two terms
    # (z itself may be near 0, where they cancel)
    err, terms = (a - b).abs(), mu.abs() + (a - mu).abs()
    assert (err <= 1e-6 * terms).all(), f"worst |dz| / (|mu| + |sd eps|): {(err / terms).max():.3g}"


def test_mismatched_devices_are_refused():
    with pytest.raises(ValueError, match="logvar is on cpu but mu is on cuda"):
        vaecuda.gaussian_kl(torch.randn(3, 4, device="cuda"), torch.randn(3, 4))
    with pytest.raises(ValueError, match="target is on cpu but logits is on cuda"):
        vaecuda.bernoulli_log_prob(torch.randn(3, 4, device="cuda"), torch.rand(3, 4))


def test_backward_ops_refuse_a_gradient_on_another_device():
    # a host gradient read by a device kernel would be an illegal address: refused by name instead
    mu, lv = torch.randn(4, 3, device="cuda"), torch.randn(4, 3, device="cuda")
    ops = torch.ops.vaecuda
    with pytest.raises(RuntimeError, match="grad is on cpu but the inputs are on cuda:0"):
        ops.gaussian_kl_backward(torch.ones(4), mu, lv, None, None, False, [True, True, False, False])
    with pytest.raises(RuntimeError, match="grad_z is on cpu but the inputs are on cuda:0"):
        ops.reparameterize_backward(torch.ones(4, 3), None, mu, lv, vaecuda.rng_state(1, device="cuda"), None,
                                    [True, True])
    with pytest.raises(RuntimeError, match="grad is on cpu but the inputs are on cuda:0"):
        ops.bernoulli_log_prob_backward(torch.ones(4), mu, lv, 1, False, [True, False])
    torch.cuda.synchronize()  # and nothing was launched that faults later


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


def _train_graph_step(model, opt, x, state):
    """A whole training step (loss, backward, Adam) captured once in a CUDA graph."""
    def step():
        opt.zero_grad(set_to_none=False)
        loss = model.loss(x, seed=state)
        loss.backward()
        opt.step()
        return loss

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = step()
    return graph, loss


def test_cuda_graph_training_step():
    """A captured training step: replays draw fresh noise when the key comes from torch's generator;
    with a key tensor set before each replay, the steps equal an eager loop's."""
    import copy
    from vaecuda.models import VAE
    torch.manual_seed(0)
    model = VAE(64, (32,), 8).cuda()
    twin = copy.deepcopy(model)
    x = (torch.rand(32, 64, device="cuda") < 0.3).float()
    opt = torch.optim.Adam(model.parameters(), 1e-3, capturable=True)
    opt2 = torch.optim.Adam(twin.parameters(), 1e-3)
    for _ in range(3):  # the same warm-up steps as _train_graph_step takes
        opt2.zero_grad()
        twin.loss(x, seed=vaecuda.rng_state(0, 0, "cuda")).backward()
        opt2.step()
    state = vaecuda.rng_state(0, 0, "cuda")
    graph, loss = _train_graph_step(model, opt, x, state)
    for i in range(3):
        state.copy_(vaecuda.rng_state(0, i + 1, "cuda"))
        graph.replay()
        opt2.zero_grad()
        want = twin.loss(x, seed=vaecuda.rng_state(0, i + 1, "cuda"))
        want.backward()
        opt2.step()
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-4)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    # seed=None inside the graph: every replay draws a new key
    m2 = VAE(64, (32,), 8).cuda()
    opt3 = torch.optim.SGD(m2.parameters(), 0.0)
    graph2, loss2 = _train_graph_step(m2, opt3, x, None)
    values = []
    for _ in range(3):
        graph2.replay()
        values.append(loss2.item())
    assert len(set(values)) == 3


def test_no_hidden_syncs():
    """No op or wrapper reads a GPU value back to the host: every call runs under sync debug 'error'."""
    mu = torch.randn(64, 16, device="cuda", requires_grad=True)
    lv = torch.randn(64, 16, device="cuda", requires_grad=True)
    logits = torch.randn(3, 64, 30, device="cuda", requires_grad=True)
    x = (torch.rand(64, 30, device="cuda") < 0.5)
    state = vaecuda.rng_state(1, 0, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for seed in (None, 7, state):
            z, kl = vaecuda.reparameterize_with_kl(mu, lv, seed=seed, reduction="mean")
            z2 = vaecuda.reparameterize(mu, lv, n_samples=3, seed=seed)
            loss = (kl + vaecuda.gaussian_kl(mu, lv, reduction="sum", free_bits=0.1)
                    - vaecuda.bernoulli_log_prob(logits, x, reduction="mean")
                    - vaecuda.bernoulli_log_prob_from_probs(torch.sigmoid(logits), x, reduction="mean")
                    + z.sum() + z2.sum())
            loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_cuda(dtype):
    lin = torch.nn.Linear(16, 16).cuda()
    learned_logvar = torch.zeros(8, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=dtype):
        mu, logvar = lin(torch.randn(4, 16, device="cuda")).chunk(2, -1)
        z, kl = vaecuda.reparameterize_with_kl(mu, logvar, seed=0)
        ll = vaecuda.bernoulli_log_prob(z @ torch.randn(8, 30, device="cuda"), torch.rand(4, 30, device="cuda"))
        kl2 = vaecuda.gaussian_kl(mu, learned_logvar)  # mixed dtypes: float32 under autocast
    assert mu.dtype == z.dtype == dtype and kl.dtype == ll.dtype == kl2.dtype == torch.float32
    (kl - ll + kl2).sum().backward()
    assert torch.isfinite(lin.weight.grad).all() and learned_logvar.grad.dtype == torch.float32


def _cuda_kernels(fn) -> list[str]:
    """The kernels one call of fn launches on the GPU (torch.profiler; after a warm-up call)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def test_one_kernel_per_op_and_direction():
    """Each fused op launches one kernel forward (as training runs it: grad mode on) and one backward.
    The key is a tensor made beforehand: seed=None adds its draw, one kernel of torch's generator.
    (Profiling may leave CUPTI attached to this process: a test of counts, not of times.)"""
    mu = torch.randn(64, 32, device="cuda", requires_grad=True)
    lv = torch.randn(64, 32, device="cuda", requires_grad=True)
    logits = torch.randn(64, 784, device="cuda", requires_grad=True)
    x = (torch.rand(64, 784, device="cuda") < 0.5).float()
    state = vaecuda.rng_state(1, 0, "cuda")
    g_z, g_rows = torch.randn(64, 32, device="cuda"), torch.randn(64, device="cuda")
    ops = {
        "sample": (lambda: (vaecuda.reparameterize(mu, lv, seed=state),), (mu, lv), (g_z,)),
        "sample+kl": (lambda: vaecuda.reparameterize_with_kl(mu, lv, seed=state), (mu, lv), (g_z, g_rows)),
        "kl": (lambda: (vaecuda.gaussian_kl(mu, lv),), (mu, lv), (g_rows,)),
        "bernoulli": (lambda: (vaecuda.bernoulli_log_prob(logits, x),), (logits,), (g_rows,)),
    }
    for name, (forward, inputs, grads) in ops.items():
        # (a count of 0 would point at the profiler first: pytorch/pytorch#192021, kernel records
        # dropped at the start of a profiling session)
        fwd = _cuda_kernels(forward)
        assert len(fwd) == 1, f"{name} forward launched {fwd}"
        held = []

        def backward():
            torch.autograd.grad(held.pop(), inputs, grads)
        for _ in range(2):  # the warm-up's outputs, then the profiled call's, made outside the profile
            held.insert(0, forward())
        bwd = _cuda_kernels(backward)
        assert len(bwd) == 1, f"{name} backward launched {bwd}"


def test_bench_launch_count():
    # harness.count_launches on vaecuda's own providers (the compiled baselines would take a minute to
    # compile here; `python -m vaecuda.bench --launches` runs them all, in gpu_check.sh's kernels stage)
    from vaecuda.bench import harness, workloads
    counts = {}
    for work in ("kl", "sample+kl"):
        case = workloads.op_case(work, "small", "fwd+bwd", torch.device("cuda"), torch.float32, False)
        case.providers = {"vaecuda": case.providers["vaecuda"]}
        counts[work] = harness.count_launches(case, torch.device("cuda"))
    assert counts["kl"]["vaecuda"]["launches"] == 2  # one kernel each way
    assert counts["sample+kl"]["vaecuda"]["launches"] == 3  # and the seed=None key's draw
    assert counts["kl"][workloads.TRIVIAL_LATENTS]["launches"] == 2
    # the trivial op passed as two roots: its two kernels and the engine's add of the two gradients
    assert counts["sample+kl"][workloads.TRIVIAL_TWO_ROOTS]["launches"] == 3
