"""vaecuda inside the training loops users already have: autocast, torch.compile of a whole step,
determinism. (DDP: test_ddp.py; CUDA graphs and hidden syncs: test_cuda.py.)"""

import copy

import pytest
import torch

import vaecuda
from vaecuda.models import VAE

from conftest import requires_compiled


def _data(b=32, p=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, p, generator=g) < 0.3).float()


# ---------------------------------------------------------------------------------------------------
# autocast
def test_autocast_cpu_bf16_ops():
    """Inside autocast the ops take the bf16 activations autocast makes, compute in fp32, return
    losses in fp32 and gradients in the inputs' dtypes."""
    lin = torch.nn.Linear(16, 2 * 8)
    h = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu, logvar = lin(h).chunk(2, -1)
        assert mu.dtype == torch.bfloat16
        z, kl = vaecuda.reparameterize_with_kl(mu, logvar, seed=0)
        logits = z @ torch.randn(8, 30)
        ll = vaecuda.bernoulli_log_prob(logits, _data(4, 30))
        kl2 = vaecuda.gaussian_kl(mu, logvar)
    assert z.dtype == torch.bfloat16 and kl.dtype == ll.dtype == kl2.dtype == torch.float32
    mu.retain_grad()
    (kl - ll + kl2).sum().backward()
    assert mu.grad.dtype == torch.bfloat16
    assert lin.weight.grad.dtype == torch.float32 and torch.isfinite(lin.weight.grad).all()
    # the fp32 math of the same bf16 inputs
    torch.testing.assert_close(kl2, vaecuda.reference.gaussian_kl(mu.detach(), logvar.detach()), rtol=1e-5, atol=1e-5)


def test_autocast_mixed_dtypes_promote_to_float32():
    """A bf16 mu (autocast Linear) beside a float32 learned logvar or prior: computed in float32 under
    autocast, refused with a clear error outside it."""
    mu = torch.randn(4, 8, dtype=torch.bfloat16)
    logvar = torch.nn.Parameter(torch.zeros(8))  # a learned global variance, float32
    prior_mu = torch.zeros(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = vaecuda.reparameterize(mu, logvar, seed=1)
        kl = vaecuda.gaussian_kl(mu, logvar, prior_mu, logvar)
    assert z.dtype == torch.float32 and kl.dtype == torch.float32
    torch.testing.assert_close(z, vaecuda.reparameterize(mu.float(), logvar, seed=1))
    kl.sum().backward()
    assert logvar.grad.dtype == torch.float32
    with pytest.raises(TypeError, match="logvar has dtype torch.float32 but mu has torch.bfloat16"):
        vaecuda.reparameterize(mu, logvar)
    # float64 beside a half type stays refused under autocast, the error naming the dtypes passed (not
    # the float32 that autocast would have cast the half tensor to)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(
            TypeError, match="logvar has dtype torch.bfloat16 but mu has torch.float64"):
        vaecuda.reparameterize(mu.double(), logvar.detach().bfloat16())


def test_autocast_training_step_close_to_fp32():
    torch.manual_seed(0)
    model = VAE(64, (32,), 8)
    ref = copy.deepcopy(model)
    x = _data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(x, seed=3)
    loss.backward()
    ref.loss(x, seed=3).backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref.loss(x, seed=3), rtol=2e-2, atol=0.5)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, q.grad, rtol=0.1, atol=0.05)


# ---------------------------------------------------------------------------------------------------
# torch.compile of a whole step
def _sgd_step(model, lr=0.05):
    params = list(model.parameters())

    def step(x, state):
        loss = model.loss(x, seed=state)
        loss.backward()
        with torch.no_grad():  # the optimizer update, inline (see the test's docstring)
            for p in params:
                # not p.add_(p.grad, alpha=-lr): torch 2.13 drops alpha there when it traces backward()
                p.sub_(lr * p.grad)
                p.grad = None
        return loss.detach()
    return step


@requires_compiled
@pytest.mark.skipif(not hasattr(torch._dynamo.config, "trace_autograd_ops"),
                    reason="tracing backward() inside a compiled step needs torch >= 2.13 (trace_autograd_ops)")
def test_compile_whole_step_fullgraph_dynamic():
    """Model, vaecuda ops, backward and the parameter update in one graph (fullgraph=True,
    dynamic=True): no graph break, no recompilation when the batch size changes, and the same
    numbers as the eager step. torch.optim's step() graph-breaks on purpose (pytorch#104053), so the
    update is written inline here; test_compile_step_with_adam covers torch.optim.Adam."""
    # config.patch, not pytest's monkeypatch: its undo deletes a torch config entry
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        _whole_step_fullgraph_dynamic()


def _whole_step_fullgraph_dynamic():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = VAE(64, (32,), 8)
    twin = copy.deepcopy(model)
    compiled = torch.compile(_sgd_step(model), fullgraph=True, dynamic=True)
    eager = _sgd_step(twin)
    state = vaecuda.rng_state(5, 0)  # the noise key as a graph input, updated in place each step
    for i, b in enumerate((16, 24, 40)):
        x = _data(b, seed=i)
        state[1] = i
        if i < 2:
            got = compiled(x, state)
        else:  # batch sizes beyond the first two run the same graph
            with torch.compiler.set_stance("fail_on_recompile"):
                got = compiled(x, state)
        want = eager(x, state)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)


@requires_compiled
def test_compile_step_with_adam():
    """The pattern torch documents: the model and loss compiled (fullgraph, dynamic), Adam's step
    compiled on its own; equal to the eager loop."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = VAE(64, (32,), 8)
    twin = copy.deepcopy(model)
    loss_fn = torch.compile(lambda x, seed: model.loss(x, seed=seed), fullgraph=True, dynamic=True)
    opt, opt2 = torch.optim.Adam(model.parameters(), 1e-3), torch.optim.Adam(twin.parameters(), 1e-3)
    opt_step = torch.compile(opt.step)
    for i, b in enumerate((16, 24, 40)):
        x = _data(b, seed=i)
        loss = loss_fn(x, i)
        loss.backward()
        opt_step()
        opt.zero_grad()
        loss2 = twin.loss(x, seed=i)
        loss2.backward()
        opt2.step()
        opt2.zero_grad()
        torch.testing.assert_close(loss, loss2, rtol=1e-5, atol=1e-4)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# determinism
def _train(steps=4, seed=0, device="cpu"):
    torch.manual_seed(seed)
    model = VAE(64, (32,), 8).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for i in range(steps):
        x = _data(32, seed=i).to(device)
        loss = model.loss(x)  # seed=None: keys drawn from torch's generator, seeded above
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()]


def test_deterministic_algorithms(device):
    """Under torch.use_deterministic_algorithms(True) the ops run, and two seeded training runs agree
    bit for bit."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        mu = torch.randn(64, 16, device=device, requires_grad=True)
        lv = torch.randn(64, 16, device=device, requires_grad=True)
        x = torch.rand(64, 20, device=device).round()
        w = torch.randn(16, 20, device=device)
        runs = []
        for _ in range(2):
            z, kl = vaecuda.reparameterize_with_kl(mu, lv, n_samples=3, seed=7)
            ll = vaecuda.bernoulli_log_prob(z @ w, x)
            g = torch.autograd.grad((kl.sum() - ll.sum()), [mu, lv])
            runs.append((z, kl, *g))
        for a, b in zip(*runs):
            assert torch.equal(a, b)
        a, b = _train(device=device), _train(device=device)
        assert a[0] == b[0]
        assert all(torch.equal(p, q) for p, q in zip(a[1], b[1]))
    finally:
        torch.use_deterministic_algorithms(before)


# ---------------------------------------------------------------------------------------------------
# activation checkpointing, and torch.func (not supported by the compiled ops: said clearly)
@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing(reentrant):
    """The loss head recomputed under torch.utils.checkpoint gives the gradients of a plain backward
    (the fixed seed makes the recomputed noise the same)."""
    from torch.utils.checkpoint import checkpoint
    x = _data(8, 20)
    mu, logvar = torch.randn(8, 6, requires_grad=True), torch.randn(8, 6, requires_grad=True)
    dec = torch.nn.Linear(6, 20)

    def head(m, lv):
        z, kl = vaecuda.reparameterize_with_kl(m, lv, seed=3)
        return (kl - vaecuda.bernoulli_log_prob(dec(z), x)).mean()

    want = torch.autograd.grad(head(mu, logvar), [mu, logvar])
    checkpoint(head, mu, logvar, use_reentrant=reentrant).backward()  # reentrant mode refuses .grad()
    for a, b in zip((mu.grad, logvar.grad), want):
        torch.testing.assert_close(a, b)


@requires_compiled
def test_torch_func_is_refused_clearly():
    l = torch.randn(3, 5)
    x = (torch.rand(3, 5) < 0.5).float()
    with pytest.raises(RuntimeError, match="functorch"):
        torch.func.grad(lambda t: vaecuda.bernoulli_log_prob(t, x).sum())(l)


@requires_compiled
def test_forward_mode_ad_is_refused_clearly():
    """Forward-mode AD has no formula for a C++ autograd Function: torch raises, nothing is silently 0."""
    import torch.autograd.forward_ad as fwAD
    mu, lv = torch.randn(3, 4), torch.randn(3, 4)
    for f in (lambda m: vaecuda.gaussian_kl(m, lv), lambda m: vaecuda.reparameterize(m, lv, seed=1),
              lambda m: vaecuda.bernoulli_log_prob(m, torch.rand(3, 4))):
        with fwAD.dual_level(), pytest.raises(RuntimeError, match="jvp is not implemented"):
            f(fwAD.make_dual(mu, torch.ones_like(mu)))


@requires_compiled
def test_inference_mode():
    mu, lv, x = torch.randn(3, 4), torch.randn(3, 4), torch.rand(3, 4)
    with torch.inference_mode():
        got = (vaecuda.gaussian_kl(mu, lv), vaecuda.reparameterize(mu, lv, seed=2), vaecuda.bernoulli_log_prob(mu, x))
    r = vaecuda.reference
    want = (r.gaussian_kl(mu, lv), r.reparameterize(mu, lv, vaecuda.rng_state(2)), r.bernoulli_log_prob(mu, x))
    for a, b in zip(got, want):
        assert a.is_inference()
        torch.testing.assert_close(a, b)


_DYNAMIC_CASES = {
    # each public op alone, forward and backward: the C++ autograd must compare sizes as symbols
    "reparameterize": lambda mu, lv, logits, x: vaecuda.reparameterize(mu, lv, seed=1).sum(),
    "reparameterize K": lambda mu, lv, logits, x: vaecuda.reparameterize(mu, lv, n_samples=4, seed=1).sum(),
    "reparameterize_with_kl": lambda mu, lv, logits, x: sum(t.sum() for t in vaecuda.reparameterize_with_kl(mu, lv, seed=1)),
    "gaussian_kl": lambda mu, lv, logits, x: vaecuda.gaussian_kl(mu, lv, reduction="sum"),
    "gaussian_kl prior": lambda mu, lv, logits, x: vaecuda.gaussian_kl(mu, lv, lv[0], mu[0], reduction="mean"),
    "gaussian_kl free bits": lambda mu, lv, logits, x: vaecuda.gaussian_kl(mu, lv, reduction="mean", free_bits=0.1),
    "bernoulli": lambda mu, lv, logits, x: vaecuda.bernoulli_log_prob(logits, x).sum(),
    "bernoulli K": lambda mu, lv, logits, x: vaecuda.bernoulli_log_prob(logits.expand(4, *logits.shape), x).sum(),
    "bernoulli probs": lambda mu, lv, logits, x: vaecuda.bernoulli_log_prob_from_probs(logits.sigmoid(), x).sum(),
}


@requires_compiled
@pytest.mark.parametrize("case", list(_DYNAMIC_CASES))
def test_compile_dynamic_batch_does_not_recompile(case):
    """Each op compiled with dynamic=True, forward and backward, at three batch sizes: one graph
    (a plain sizes() comparison in a backward once fixed the batch of reparameterize)."""
    torch._dynamo.reset()
    fn = _DYNAMIC_CASES[case]

    def step(mu, lv, logits, x):
        loss = fn(mu, lv, logits, x)
        return (loss,) + torch.autograd.grad(loss, [mu, lv, logits], allow_unused=True)

    compiled = torch.compile(step, dynamic=True)
    for i, b in enumerate((3, 5, 7)):
        g = torch.Generator().manual_seed(b)
        mu, lv = (torch.randn(b, 6, generator=g).requires_grad_() for _ in range(2))
        logits = torch.randn(b, 10, generator=g).requires_grad_()
        x = (torch.rand(b, 10, generator=g) < 0.5).float()
        if i == 0:
            got = compiled(mu, lv, logits, x)
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                got = compiled(mu, lv, logits, x)
        for a, e in zip(got, step(mu, lv, logits, x)):
            if e is None:
                assert a is None
            else:
                torch.testing.assert_close(a, e)


@requires_compiled
def test_compile_dynamic_n_samples_does_not_recompile():
    """n_samples is a SymInt in the schemas: K samples (an IWAE's k, a last smaller chunk) vary
    without a new graph under dynamic=True, forward and backward, with eager's results."""
    torch._dynamo.reset()

    def f(m, l, k):
        z = vaecuda.reparameterize(m, l, n_samples=k, seed=1)
        z2, kl = vaecuda.reparameterize_with_kl(m, l, n_samples=k, seed=2)
        return z.square().mean() + z2.mean() + kl.mean()

    compiled = torch.compile(f, dynamic=True)
    g = torch.Generator().manual_seed(0)
    mu, lv = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    for i, k in enumerate((2, 3, 5)):
        m, l = mu.clone().requires_grad_(), lv.clone().requires_grad_()
        if i == 0:
            out = compiled(m, l, k)
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                out = compiled(m, l, k)
        m2, l2 = mu.clone().requires_grad_(), lv.clone().requires_grad_()
        want = f(m2, l2, k)
        torch.testing.assert_close(out, want)
        for a, b in zip(torch.autograd.grad(out, [m, l]), torch.autograd.grad(want, [m2, l2])):
            torch.testing.assert_close(a, b)


@requires_compiled
def test_vmap_runs_per_slice_as_documented():
    """vmap has no batching rule for the ops: torch's per-slice fallback gives the per-slice results,
    sampling with a fixed key draws the same noise in every slice, and seed=None raises torch's
    randomness error."""
    import warnings
    g = torch.Generator().manual_seed(0)
    mu, lv = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    x = torch.rand(3, 4, 5, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "performance drop" warning for the fallback
        kl = torch.func.vmap(vaecuda.gaussian_kl)(mu, lv)
        ll = torch.func.vmap(vaecuda.bernoulli_log_prob)(mu, x)
        z = torch.func.vmap(lambda m, l: vaecuda.reparameterize(m, l, seed=4))(mu, lv)
        torch.testing.assert_close(kl, torch.stack([vaecuda.gaussian_kl(a, b) for a, b in zip(mu, lv)]))
        torch.testing.assert_close(ll, torch.stack([vaecuda.bernoulli_log_prob(a, b) for a, b in zip(mu, x)]))
        key = vaecuda.rng_state(4)
        for i in range(3):
            assert torch.equal(z[i], vaecuda.reparameterize(mu[i], lv[i], seed=key))
        with pytest.raises(RuntimeError, match="randomness"):
            torch.func.vmap(lambda m, l: vaecuda.reparameterize(m, l))(mu, lv)
