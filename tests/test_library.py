"""The compiled ops as torch operators: opcheck, torch.compile of a training step, double backward."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import vaecuda
from vaecuda import reference as ref

from conftest import requires_compiled

pytestmark = requires_compiled
ops = torch.ops.vaecuda


def _opcheck_cases(device):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    state = vaecuda.rng_state(3, 1, device)
    x = (torch.rand(4, 2, 6, generator=g) < 0.5).to(device)
    return [
        (ops.gaussian_kl, (r(4, 6), r(4, 6), None, None, False)),
        (ops.gaussian_kl, (r(3, 4, 6), r(3, 4, 6), r(6), r(4, 6), False)),
        (ops.gaussian_kl, (r(4, 6), r(4, 6), None, None, True)),
        (ops.reparameterize, (r(4, 6), r(4, 6), state, None)),
        (ops.reparameterize, (r(4, 6), r(6), state, 3)),
        (ops.reparameterize_with_kl, (r(4, 6), r(4, 6), state, 2)),
        (ops.bernoulli_log_prob, (r(4, 2, 6), x.float(), 1)),
        (ops.bernoulli_log_prob, (r(5, 4, 2, 6), x.to(torch.uint8), 2)),
        (ops.bernoulli_log_prob, (r(4, 2, 6).double(), torch.rand(2, 6, generator=g).to(device).double(), 2)),
        (ops.bernoulli_log_prob, (torch.rand(4, 2, 6, generator=g).to(device), x.float(), 1, True)),
        (ops.bernoulli_log_prob, (torch.rand(3, 4, 2, 6, generator=g).to(device), x, 3, True)),
        (ops._scale, (r(3, 3), 2.5)),
        # the forwards that also return a gradient (not differentiable themselves: see below)
        (ops._bernoulli_log_prob_and_grad, (r(4, 2, 6), x.float(), 1, False)),
        (ops._bernoulli_log_prob_and_grad, (torch.rand(4, 2, 6, generator=g).to(device).double(), x, 2, True)),
    ] + ([  # CPU only: the KL's (see GaussianKL in csrc/autograd.cpp)
        (ops._gaussian_kl_and_grad, (r(4, 6), r(4, 6), False)),
        (ops._gaussian_kl_and_grad, (r(3, 4, 6).double(), r(3, 4, 6).double(), True)),
    ] if torch.device(device).type == "cpu" else [])


_NOT_DIFFERENTIABLE = ("_bernoulli_log_prob_and_grad", "_gaussian_kl_and_grad")


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    for op, args in _opcheck_cases(device):
        args = tuple(a.requires_grad_() if (requires_grad and isinstance(a, torch.Tensor) and a.is_floating_point()
                                            and a.dtype != torch.int64) else a for a in args)
        # a backward through the private forwards raises by design (test_private_forwards_refuse_a_backward),
        # so with grads the AOT test, which differentiates, is left out for them
        utils = ("test_schema", "test_autograd_registration", "test_faketensor")
        if not (requires_grad and op._qualified_op_name.split("::")[1] in _NOT_DIFFERENTIABLE):
            utils += ("test_aot_dispatch_dynamic",)
        torch.library.opcheck(op, args, test_utils=utils)


def _loss(mu, lv, logits_w, x):
    z, kl = vaecuda.reparameterize_with_kl(mu, lv, seed=0)
    logits = z @ logits_w
    ll = vaecuda.bernoulli_log_prob(logits, x) + vaecuda.bernoulli_log_prob_from_probs(torch.sigmoid(logits), x)
    kl2 = vaecuda.gaussian_kl(mu, lv, torch.zeros_like(mu), torch.zeros_like(lv))
    z2 = vaecuda.reparameterize(mu, lv, n_samples=2, seed=1)
    return (kl + kl2 - ll).mean() + z2.square().mean()


def _step(mu, lv, logits_w, x, loss_fn=_loss):
    loss = loss_fn(mu, lv, logits_w, x)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_training_step(device, backend):
    # the loss (all ops) compiles as one graph; AOTAutograd compiles its backward from the C++
    # autograd formulas and the fake kernels
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(8, 5, generator=g).to(device).requires_grad_()
    lv = torch.randn(8, 5, generator=g).to(device).requires_grad_()
    w = torch.randn(5, 30, generator=g).to(device).requires_grad_()
    x = (torch.rand(8, 30, generator=g) < 0.5).float().to(device)
    eager = _step(mu, lv, w, x)
    grads = [t.grad.clone() for t in (mu, lv, w)]
    for t in (mu, lv, w):
        t.grad = None
    compiled = _step(mu, lv, w, x, torch.compile(_loss, fullgraph=True, backend=backend))
    torch.testing.assert_close(compiled, eager)
    for t, expected in zip((mu, lv, w), grads):
        torch.testing.assert_close(t.grad, expected)


def test_compile_inductor_forward_backward(device):
    mu = torch.randn(16, 4, device=device, requires_grad=True)
    lv = torch.randn(16, 4, device=device, requires_grad=True)

    def f(m, l):
        z, kl = vaecuda.reparameterize_with_kl(m, l, seed=3)
        return z.sum() + kl.sum() + vaecuda.gaussian_kl(m, l, reduction="mean")

    out = torch.compile(f, fullgraph=True)(mu, lv)
    gm, gl = torch.autograd.grad(out, [mu, lv])
    m2, l2 = mu.detach().requires_grad_(), lv.detach().requires_grad_()
    expected = f(m2, l2)
    em, el = torch.autograd.grad(expected, [m2, l2])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(gm, em)
    torch.testing.assert_close(gl, el)


@pytest.mark.parametrize("which", ["kl", "reparameterize", "bernoulli"])
def test_double_backward_raises_clearly(device, which):
    mu = torch.randn(3, 4, device=device, dtype=torch.float64, requires_grad=True)
    lv = torch.randn(3, 4, device=device, dtype=torch.float64, requires_grad=True)
    x = torch.rand(3, 4, device=device, dtype=torch.float64)
    state = vaecuda.rng_state(0, device=device)
    fns = {"kl": (vaecuda.gaussian_kl, ref.gaussian_kl),
           "reparameterize": (lambda m, l: vaecuda.reparameterize(m, l, seed=state), lambda m, l: ref.reparameterize(m, l, state)),
           "bernoulli": (lambda m, l: vaecuda.bernoulli_log_prob(m, x), lambda m, l: ref.bernoulli_log_prob(m, x))}
    ours, theirs = fns[which]
    # sampling's d mu is the upstream gradient passed through (differentiable as it is); its d logvar
    # comes from the kernel
    wrt = lv if which == "reparameterize" else mu
    (g,) = torch.autograd.grad(ours(mu, lv).square().sum(), [wrt], create_graph=True)  # with a graph: fine
    (expected,) = torch.autograd.grad(theirs(mu, lv).square().sum(), [wrt])
    torch.testing.assert_close(g, expected)
    with pytest.raises(RuntimeError, match="second derivative of .* is not implemented"):
        g.sum().backward()


@pytest.mark.parametrize("which", ["kl", "kl_free_bits", "reparameterize", "sample+kl", "bernoulli"])
def test_batched_gradients(device, which):
    """is_grads_batched and vectorized jacobians run the backward under vmap: the saved-gradient paths
    must not scale their buffers in place there (a batched gradient does not fit them)."""
    g = torch.Generator().manual_seed(1)
    mu, lv = (torch.randn(3, 4, generator=g, dtype=torch.float64).to(device).requires_grad_() for _ in range(2))
    x = torch.rand(3, 4, generator=g, dtype=torch.float64).to(device)
    state = vaecuda.rng_state(2, device=device)
    fns = {"kl": (vaecuda.gaussian_kl, ref.gaussian_kl),
           "kl_free_bits": (lambda m, l: vaecuda.gaussian_kl(m, l, reduction="sum", free_bits=0.3).reshape(1),
                            lambda m, l: ref.gaussian_kl(m, l, elementwise=True).mean(0).clamp_min(0.3).sum().mul(3).reshape(1)),
           "reparameterize": (lambda m, l: vaecuda.reparameterize(m, l, seed=state).sum(-1),
                              lambda m, l: ref.reparameterize(m, l, state).sum(-1)),
           "sample+kl": (lambda m, l: sum(t.sum(-1) if t.dim() == 2 else t for t in vaecuda.reparameterize_with_kl(m, l, seed=state)),
                         lambda m, l: sum(t.sum(-1) if t.dim() == 2 else t for t in ref.reparameterize_with_kl(m, l, state))),
           "bernoulli": (lambda m, l: vaecuda.bernoulli_log_prob(m * l, x), lambda m, l: ref.bernoulli_log_prob(m * l, x))}
    ours, theirs = fns[which]
    out = ours(mu, lv)
    eye = torch.eye(out.numel(), dtype=out.dtype, device=device).reshape(out.numel(), *out.shape)
    got = torch.autograd.grad(out, [mu, lv], eye, is_grads_batched=True)
    want = torch.autograd.grad(theirs(mu, lv), [mu, lv], eye, is_grads_batched=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    jac = torch.autograd.functional.jacobian(ours, (mu, lv), vectorize=True)
    for a, b in zip(jac, want):
        torch.testing.assert_close(a, b)


def test_private_forwards_refuse_a_backward(device):
    """The forwards that also return a gradient serve the autograd of the public ops from below it;
    called directly on inputs that require grad, a backward through them raises (no silent None)."""
    mu = torch.randn(3, 4, device=device, requires_grad=True)
    calls = [lambda: ops._bernoulli_log_prob_and_grad(mu, torch.rand(3, 4, device=device), 1, False)[0]]
    if torch.device(device).type == "cpu":
        calls.append(lambda: ops._gaussian_kl_and_grad(mu, mu.detach(), False)[0])
    for call in calls:
        with pytest.raises(RuntimeError, match="derivative for vaecuda::_.*_and_grad is not implemented"):
            call().sum().backward()


@pytest.mark.parametrize("lv_grad", [True, False])
def test_reparameterize_passes_grad_mu_through(device, lv_grad):
    """One sample, no KL gradient: d mu is the upstream gradient itself (no kernel writes a copy), and
    differentiating it again is exact (it is the identity's derivative)."""
    mu = torch.randn(5, 8, device=device, dtype=torch.float64, requires_grad=True)
    lv = torch.randn(5, 8, device=device, dtype=torch.float64, requires_grad=lv_grad)
    g = torch.randn(5, 8, device=device, dtype=torch.float64)
    z = vaecuda.reparameterize(mu, lv, seed=4)
    grads = torch.autograd.grad(z, [mu, lv] if lv_grad else [mu], g)
    assert grads[0].data_ptr() == g.data_ptr()  # the very tensor
    zr = ref.reparameterize(mu, lv, vaecuda.rng_state(4, device=device))
    for a, b in zip(grads, torch.autograd.grad(zr, [mu, lv] if lv_grad else [mu], g)):
        torch.testing.assert_close(a, b)
    # second derivative through d mu, against the reference's
    (dmu,) = torch.autograd.grad(vaecuda.reparameterize(mu, lv, seed=4).square().sum(), [mu], create_graph=True)
    (dmu_ref,) = torch.autograd.grad(zr.square().sum(), [mu], create_graph=True)
    torch.testing.assert_close(torch.autograd.grad(dmu.sum(), [mu])[0], torch.autograd.grad(dmu_ref.sum(), [mu])[0])
    # broadcast mu (logvar wider), K samples and a KL gradient still go through the kernel
    mu1 = mu[:1].detach().requires_grad_()
    (d1,) = torch.autograd.grad(vaecuda.reparameterize(mu1, lv, seed=4), [mu1], g)
    torch.testing.assert_close(d1, g.sum(0, keepdim=True))
    (dk,) = torch.autograd.grad(vaecuda.reparameterize(mu, lv, n_samples=3, seed=4), [mu], g.expand(3, 5, 8))
    torch.testing.assert_close(dk, 3 * g)
    z, kl = vaecuda.reparameterize_with_kl(mu, lv, seed=4)
    (dkl,) = torch.autograd.grad((z, kl), [mu], (g, torch.ones(5, device=device, dtype=torch.float64)))
    torch.testing.assert_close(dkl, g + mu)


def test_backward_computes_only_requested_gradients(device):
    mu = torch.randn(4, 6, device=device, requires_grad=True)
    lv = torch.randn(4, 6, device=device)  # no grad
    vaecuda.gaussian_kl(mu, lv).sum().backward()
    assert lv.grad is None and mu.grad is not None
    dmu, dlv, _, _ = ops.gaussian_kl_backward(torch.ones(4, device=device), mu, lv, None, None, False, [True, False, False, False])
    assert dmu.shape == mu.shape and dlv.numel() == 0


class _ExportVAE(torch.nn.Module):
    """A small VAE loss with every public op, as a user would export it."""

    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(12, 8)
        self.dec = torch.nn.Linear(4, 12)

    def forward(self, x, state):
        mu, lv = self.enc(x).chunk(2, dim=-1)
        z, kl = vaecuda.reparameterize_with_kl(mu, lv, seed=state)
        zk = vaecuda.reparameterize(mu, lv, n_samples=2, seed=state, offset=1)
        ll = vaecuda.bernoulli_log_prob(self.dec(z), x > 0) + vaecuda.bernoulli_log_prob_from_probs(
            torch.sigmoid(self.dec(zk)), (x > 0).float()).mean(0)
        return (kl - ll).mean() + vaecuda.gaussian_kl(mu, lv, reduction="mean", free_bits=0.1)


def test_torch_export(device, tmp_path):
    """torch.export of a module using the ops: each op is one node of the exported graph (before and
    after run_decompositions), a dynamic batch works, the program survives save/load, and gradients
    through the exported module equal eager ones."""
    torch.manual_seed(0)
    model = _ExportVAE().to(device)
    state = vaecuda.rng_state(5, device=device)
    x = torch.randn(6, 12, device=device)
    batch = torch.export.Dim("batch", min=2)
    ep = torch.export.export(model, (x, state), dynamic_shapes=({0: batch}, None))
    for program in (ep, ep.run_decompositions()):
        names = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
        for op in ("reparameterize_with_kl", "reparameterize", "bernoulli_log_prob", "gaussian_kl"):
            assert f"vaecuda.{op}.default" in names, (op, names)
    path = tmp_path / "vae.pt2"
    torch.export.save(ep, str(path))
    loaded = torch.export.load(str(path)).module()
    for rows in (6, 9):
        xb = torch.randn(rows, 12, device=device)
        expected = model(xb, state)
        expected_grads = torch.autograd.grad(expected, list(model.parameters()))
        got = loaded(xb, state)
        torch.testing.assert_close(got, expected)
        for a, b in zip(torch.autograd.grad(got, list(loaded.parameters())), expected_grads):
            torch.testing.assert_close(a, b)


def test_aot_inductor_package(tmp_path):
    """The exported program compiled ahead of time by AOTInductor (a .pt2 package for serving), then
    loaded and run in a fresh process, as a server would: the ops run from the package (through its
    proxy executor; that process imports vaecuda), at two batch sizes, with eager's values. A fresh
    process also keeps a crash of the loader (one killed an xdist worker on an H200 host, torch 2.11)
    inside this test, with its traceback (faulthandler) in the failure. CPU only: ~40 s of C++ compile
    on 2 cores."""
    torch.manual_seed(0)
    model = _ExportVAE()
    state = vaecuda.rng_state(7)
    batch = torch.export.Dim("batch", min=2)
    ep = torch.export.export(model, (torch.randn(6, 12), state), dynamic_shapes=({0: batch}, None))
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "vae_aoti.pt2"))
    xs = [torch.randn(rows, 12) for rows in (3, 10)]
    with torch.no_grad():
        torch.save({"x": xs, "want": [model(x, state) for x in xs]}, tmp_path / "io.pt")
    serve = textwrap.dedent("""
        import sys, torch, vaecuda
        runner = torch._inductor.aoti_load_package(sys.argv[1])
        io = torch.load(sys.argv[2])
        for x, want in zip(io["x"], io["want"]):
            with torch.no_grad():
                torch.testing.assert_close(runner(x, vaecuda.rng_state(7)), want)
        print("served", len(io["x"]))
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(vaecuda.__file__)))  # the vaecuda this test imported
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", serve, path, str(tmp_path / "io.pt")],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0 and "served 2" in r.stdout, f"rc {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
