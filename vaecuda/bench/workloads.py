"""What the benchmark runs: named shapes, the work at each (one op, the loss head, a training step),
and the providers that do the same work (vaecuda, eager PyTorch, torch.compile, on CUDA also
compile "reduce-overhead" and vaecuda in a captured CUDA graph).

A provider is a forward function ``forward(fixed)`` returning a tuple of output tensors. With
``fixed=True`` every provider draws the same noise (vaecuda's Philox stream for one seed), which is how
the harness checks that all providers compute the same values before it times anything; with
``fixed=False`` each draws its noise as it would in a training loop.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

import vaecuda
from vaecuda import models
from vaecuda import reference as ref

SEED = 1234

# name: dims. B rows, D latent dims, P pixels per row, K samples per row (IWAE).
SHAPES = {
    "small": dict(B=128, D=32, P=784),
    "medium": dict(B=1024, D=128, P=3072),
    "iwae": dict(B=128, D=50, P=784, K=50),
    "large": dict(B=4096, D=1024, P=12288),
    "xlarge": dict(B=65536, D=1024),
}
SWEEP = {f"sweep-{b}": dict(B=b, D=256, P=1024) for b in (256, 1024, 4096, 16384, 65536)}
ALL_SHAPES = {**SHAPES, **SWEEP}

OPS = ("sample", "sample+kl", "kl", "bernoulli", "head")
# more work, by name only (--ops) and in the full suite: the Bernoulli term on uint8 pixels, which an
# eager loop casts to the logits' dtype first
EXTRA_OPS = ("bernoulli-u8",)
BERNOULLI = ("bernoulli", "bernoulli-u8")  # the Bernoulli term's work, float or uint8 pixels
# training steps at B=128: the 784-400-20 VAE (PyTorch example), the IWAE paper's 784-200-200-50 tanh
# VAE, and a conv VAE on 28x28
MODELS = ("mlp", "iwae-mlp", "conv")
MODES = ("fwd", "fwd+bwd")


@dataclass
class Case:
    """One piece of work at one shape, done by several providers."""
    work: str                  # an op name, "head", or "train/<model>"
    shape: str
    mode: str                  # "fwd" | "fwd+bwd" | "step"
    dims: dict
    providers: dict[str, Callable[[bool], tuple]]     # name -> forward(fixed) -> outputs
    wrt: dict[str, list[torch.Tensor]]                # name -> tensors gradients are taken for
    grads_out: tuple = ()                             # upstream gradients of the outputs
    min_bytes: int | None = None                      # the least memory traffic of one step
    steps: dict[str, Callable[[], None]] = field(default_factory=dict)  # custom steps (training)
    compiled: set = field(default_factory=set)        # providers whose first calls compile

    @property
    def key(self) -> str:
        return f"{self.shape}/{self.work}/{self.mode}"


# ---------------------------------------------------------------------------------------------------
# the same math, as PyTorch users write it (eps=None: draw it inside, as a training loop does)
def eager_sample(mu, lv, eps=None, n_samples=None):
    if eps is None:
        shape = mu.shape if n_samples is None else (n_samples, *mu.shape)
        eps = torch.randn(shape, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * lv) * eps


def eager_kl(mu, lv):
    return 0.5 * (torch.exp(lv) + mu * mu - 1.0 - lv).sum(-1)


def eager_bernoulli(logits, x):
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)


def eager_bernoulli_u8(logits, x):
    return eager_bernoulli(logits, x.to(logits.dtype))


def eager_sample_kl(mu, lv, eps=None, n_samples=None):
    return eager_sample(mu, lv, eps, n_samples), eager_kl(mu, lv)


def eager_head(mu, lv, logits, x, eps=None):
    z, kl = eager_sample_kl(mu, lv, eps)
    return z, (kl - eager_bernoulli(logits, x)).mean()


def vaecuda_head(mu, lv, logits, x, seed=None):
    z, kl = vaecuda.reparameterize_with_kl(mu, lv, seed=seed)
    return z, (kl - vaecuda.bernoulli_log_prob(logits, x)).mean()


def fixed_eps(shape, device, dtype):
    """vaecuda's noise for SEED over a tensor of `shape`, as eager code would be handed it."""
    n = 1
    for s in shape:
        n *= s
    return ref.normals(vaecuda.rng_state(SEED, device=device), 0, n).reshape(shape).to(dtype)


# ---------------------------------------------------------------------------------------------------
def min_bytes(work: str, mode: str, dims: dict, esize: int) -> int | None:
    """The least bytes one step must move: each input read once per pass that needs it, each output
    written once (losses are float32, float64 for float64 inputs). The backward regenerates eps
    instead of reading it."""
    B, D, P, K = dims["B"], dims.get("D", 0), dims.get("P", 0), dims.get("K", 1)
    loss_size = 8 if esize == 8 else 4
    lat, pix, row = B * D * esize, B * P * esize, B * loss_size
    if work == "bernoulli-u8":  # targets of one byte: the logits' traffic, less the target's bytes saved
        return min_bytes("bernoulli", mode, dims, esize) - (1 + (mode == "fwd+bwd")) * B * P * (esize - 1)
    if work == "bernoulli":
        row *= K  # one log-likelihood per sample and row
    bwd = mode == "fwd+bwd"
    if work == "sample":      # fwd: mu, lv -> z (K samples); bwd: gz, lv -> glv, and gmu = sum_k gz
        # (with one sample gmu is gz itself, passed through as torch's add does: nothing to write)
        return 2 * lat + K * lat + (K * lat + 2 * lat + (lat if K > 1 else 0) if bwd else 0)
    if work == "kl":          # fwd: mu, lv -> kl; bwd: gkl, mu, lv -> gmu, glv
        return 2 * lat + row + (row + 4 * lat if bwd else 0)
    if work == "sample+kl":   # fwd: mu, lv -> z, kl; bwd: gz, gkl, mu, lv -> gmu, glv
        return 2 * lat + K * lat + row + (K * lat + row + 4 * lat if bwd else 0)
    if work == "bernoulli":   # fwd: logits (K per row), x -> ll; bwd: gll, logits, x -> glogits
        return K * pix + pix + row + (row + 2 * K * pix + pix if bwd else 0)
    if work == "head":
        return (min_bytes("sample+kl", mode, dims, esize) + min_bytes("bernoulli", mode, dims, esize))
    return None


def applicable(work: str, dims: dict) -> bool:
    if work in BERNOULLI + ("head",):
        return "P" in dims and (work != "head" or "K" not in dims)
    return "D" in dims


def _leaf(g, shape, device, dtype, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(device, dtype).requires_grad_()


def op_case(work: str, shape: str, mode: str, device, dtype, cuda_extras: bool) -> Case:
    dims = ALL_SHAPES[shape]
    B, D, P, K = dims["B"], dims.get("D"), dims.get("P"), dims.get("K")
    g = torch.Generator().manual_seed(0)
    loss_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    mu = lv = logits = x = None
    if work in ("sample", "sample+kl", "kl", "head"):
        mu, lv = _leaf(g, (B, D), device, dtype), _leaf(g, (B, D), device, dtype, 0.5)
    if work in BERNOULLI + ("head",):
        logits = _leaf(g, ((K,) if K else ()) + (B, P), device, dtype, 2.0)
        x = (torch.rand(B, P, generator=g) < 0.3).to(device, torch.uint8 if work == "bernoulli-u8" else dtype)
    zshape = ((K,) if K else ()) + (B, D) if D else None
    g_z = torch.randn(*zshape, generator=g).to(device, dtype) if zshape else None
    per_sample = K and work in BERNOULLI
    g_rows = torch.randn(*(((K,) if per_sample else ()) + (B,)), generator=g).to(device, loss_dtype)
    fixed_noise = []  # made once, on the first fixed call

    def eps(fixed):
        if not fixed:
            return None
        if not fixed_noise:
            fixed_noise.append(fixed_eps(zshape, device, dtype))
        return fixed_noise[0]

    seed = (lambda fixed: SEED if fixed else None)

    if work == "sample":
        eager = lambda fixed: (eager_sample(mu, lv, eps(fixed), K),)  # noqa: E731
        fused = lambda fixed: (vaecuda.reparameterize(mu, lv, n_samples=K, seed=seed(fixed)),)  # noqa: E731
        target, inputs, grads = eager_sample, (mu, lv), (g_z,)
        call = lambda f, fixed: (f(mu, lv, eps(fixed), K),)  # noqa: E731
    elif work == "sample+kl":
        eager = lambda fixed: eager_sample_kl(mu, lv, eps(fixed), K)  # noqa: E731
        fused = lambda fixed: vaecuda.reparameterize_with_kl(mu, lv, n_samples=K, seed=seed(fixed))  # noqa: E731
        target, inputs, grads = eager_sample_kl, (mu, lv), (g_z, g_rows)
        call = lambda f, fixed: f(mu, lv, eps(fixed), K)  # noqa: E731
    elif work == "kl":
        eager = lambda fixed: (eager_kl(mu, lv),)  # noqa: E731
        fused = lambda fixed: (vaecuda.gaussian_kl(mu, lv),)  # noqa: E731
        target, inputs, grads = eager_kl, (mu, lv), (g_rows,)
        call = lambda f, fixed: (f(mu, lv),)  # noqa: E731
    elif work in BERNOULLI:
        target = eager_bernoulli if work == "bernoulli" else eager_bernoulli_u8
        eager = lambda fixed: (target(logits, x),)  # noqa: E731
        fused = lambda fixed: (vaecuda.bernoulli_log_prob(logits, x),)  # noqa: E731
        inputs, grads = (logits,), (g_rows,)
        call = lambda f, fixed: (f(logits, x),)  # noqa: E731
    elif work == "head":
        eager = lambda fixed: eager_head(mu, lv, logits, x, eps(fixed))  # noqa: E731
        fused = lambda fixed: vaecuda_head(mu, lv, logits, x, seed(fixed))  # noqa: E731
        target, inputs, grads = eager_head, (mu, lv, logits), (g_z, torch.ones((), device=device, dtype=loss_dtype))
        call = lambda f, fixed: f(mu, lv, logits, x, eps(fixed))  # noqa: E731
    else:
        raise ValueError(f"unknown op {work!r}")

    compiled = torch.compile(target, dynamic=False)
    providers = {"eager": eager, "compile": lambda fixed: call(compiled, fixed), "vaecuda": fused}
    extra = set()
    if cuda_extras:
        ro = torch.compile(target, mode="reduce-overhead", dynamic=False)

        def reduce_overhead(fixed):
            torch.compiler.cudagraph_mark_step_begin()  # each call a new step: earlier outputs may be reused
            return call(ro, fixed)  # (the check copies what it keeps: harness.results_of)
        providers["compile-ro"] = reduce_overhead
        extra.add("compile-ro")
    case = Case(work, shape, mode, dims, providers, {p: list(inputs) for p in providers}, grads,
                min_bytes(work, mode, dims, torch.finfo(dtype).bits // 8), compiled={"compile"} | extra)
    if cuda_extras:
        case.steps["vaecuda-graph"] = graphed_step(fused, list(inputs), grads, mode)
    if shape == "small" and mode == "fwd+bwd":
        # the floor, timed in the same interleaved rounds as the providers (a noisy machine drifts
        # between cases): the trivial op on the latents, and for the pixel-wise work on the logits' size
        case.steps[TRIVIAL_LATENTS] = trivial_step((B, D), device, dtype)
        if work in BERNOULLI + ("head",):
            case.steps[TRIVIAL_PIXELS] = trivial_step((B, P), device, dtype)
        if len(grads) == 2:  # two outputs, two upstream gradients: the engine's cost of a second root
            case.steps[TRIVIAL_TWO_ROOTS] = trivial_step((B, D), device, dtype, roots=2)
    return case


TRIVIAL_LATENTS, TRIVIAL_PIXELS, TRIVIAL_TWO_ROOTS = "trivial [B, D]", "trivial [B, P]", "trivial x2 roots"
FLOORS = (TRIVIAL_LATENTS, TRIVIAL_PIXELS, TRIVIAL_TWO_ROOTS)
# the keys under which vaecuda's step over each floor is reported (harness.time_case, report.rows_of)
OVER_FLOOR = {TRIVIAL_LATENTS: "over_trivial_op", TRIVIAL_PIXELS: "over_same_size_op",
              TRIVIAL_TWO_ROOTS: "over_two_root_op"}


def _trivial_operands(shape, device, dtype):
    """The input of the trivial op (a leaf) and its upstream gradient."""
    g = torch.Generator().manual_seed(0)
    return _leaf(g, shape, device, dtype), torch.randn(*shape, generator=g).to(device, dtype)


def trivial_step(shape, device, dtype, roots: int = 1) -> Callable[[], None]:
    """fwd+bwd of vaecuda's ``_scale`` (alpha * x: dispatcher + C++ autograd, one kernel each way) on a
    tensor of ``shape``: the cheapest op through vaecuda's binding path. ``roots=2`` passes its output
    twice, with two upstream gradients, as a step of a two-output op (sample+KL, the loss head) passes
    both of its outputs: the autograd engine adds a graph root for more than one output (and here one
    add of the two gradients, a kernel more than the op's own step)."""
    a, ga = _trivial_operands(shape, device, dtype)
    scale = torch.ops.vaecuda._scale.default
    grads = [ga] * roots

    def step():
        y = scale(a, 2.0)
        return torch.autograd.grad([y] * roots, [a], grads)
    return step


def graphed_step(forward, inputs, grads_out, mode) -> Callable[[], None]:
    """vaecuda's step captured once in a CUDA graph, then replayed (fresh noise each replay: the key is
    drawn from torch's CUDA generator, which graphs advance on replay)."""
    def body():
        outs = forward(False)
        if mode == "fwd+bwd":
            torch.autograd.grad(outs, inputs, grads_out)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture stream, as torch.cuda.graphs asks
        for _ in range(3):
            with torch.no_grad() if mode == "fwd" else torch.enable_grad():
                body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        with torch.no_grad() if mode == "fwd" else torch.enable_grad():
            body()
    return graph.replay


# ---------------------------------------------------------------------------------------------------
def train_case(model_name: str, device, dtype) -> Case:
    """A full training step (forward, loss, backward, Adam) of a real VAE at batch 128: the model with
    eager loss math, the same under torch.compile (model + loss compiled; backward and Adam eager, as
    most loops do), and with vaecuda's ops."""
    torch.manual_seed(0)
    if model_name == "mlp":
        base, x = models.VAE.pytorch_example(ops="eager"), torch.rand(128, 784)
    elif model_name == "iwae-mlp":
        base, x = models.VAE.iwae_paper(ops="eager"), torch.rand(128, 784)
    elif model_name == "conv":
        base, x = models.ConvVAE((1, 28, 28), channels=32, latent=16, ops="eager"), torch.rand(128, 1, 28, 28)
    else:
        raise ValueError(f"unknown model {model_name!r}")
    x = (x < 0.3).to(device, dtype)
    base = base.to(device, dtype)
    nets = {}
    for name, ops in (("eager", "eager"), ("compile", "eager"), ("vaecuda", "fused")):
        net = copy.deepcopy(base)
        net.ops = ops
        nets[name] = net
    # the eager loss math draws vaecuda's noise when asked for a fixed seed, so all three can be compared
    loss_fns = {"eager": nets["eager"].loss, "vaecuda": nets["vaecuda"].loss,
                "compile": torch.compile(nets["compile"].loss, dynamic=False)}
    providers = {name: (lambda fixed, f=f: (f(x, seed=SEED if fixed else None),)) for name, f in loss_fns.items()}
    steps = {}
    for name, net in nets.items():
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        def step(f=loss_fns[name], opt=opt):
            f(x).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        steps[name] = step
    return Case(f"train/{model_name}", "B=128", "step", {"B": 128}, providers,
                {name: list(net.parameters()) for name, net in nets.items()}, (), None, steps, {"compile"})


def binding_case(device, dtype, pixels: bool = False) -> Case:
    """The cheapest op through each way of binding an op, fwd+bwd at the small shape: plain ``x * 2``,
    vaecuda's ``_scale`` (dispatcher + C++ autograd, as every vaecuda op) and a Python
    ``torch.library.custom_op`` with ``register_autograd``. The floor under every op's per-call cost.

    On the latents ``[B, D]`` by default; ``pixels=True`` on a ``[B, P]`` tensor, the size of the
    Bernoulli term's logits: the same path plus the least work any op on that many elements does,
    which separates the Bernoulli term's per-call cost from its arithmetic."""
    dims = SHAPES["small"]
    shape = (dims["B"], dims["P"] if pixels else dims["D"])
    a, ga = _trivial_operands(shape, device, dtype)
    scale_c = torch.ops.vaecuda._scale.default
    scale_py = _scale_py_op()
    providers = {"x * 2": lambda fixed: (a * 2.0,), "vaecuda _scale": lambda fixed: (scale_c(a, 2.0),),
                 "custom_op _scale": lambda fixed: (scale_py(a, 2.0),)}
    work = "binding path (pixels)" if pixels else "binding path"
    case = Case(work, "small", "fwd+bwd", dims, providers, {p: [a] for p in providers}, (ga,))
    if not pixels:  # what drawing the noise key costs each call with seed=None, beside the floor
        case.steps[RNG_DRAW] = lambda: vaecuda.rng_state(None, 0, device)
    return case


RNG_DRAW = "rng_state draw"


_SCALE_PY = None


def _scale_py_op():
    global _SCALE_PY
    if _SCALE_PY is None:
        @torch.library.custom_op("vaecuda_bench::scale_py", mutates_args=())
        def scale_py(x: torch.Tensor, alpha: float) -> torch.Tensor:
            return x * alpha

        @scale_py.register_fake
        def _(x, alpha):
            return torch.empty_like(x)

        def backward(ctx, g):
            return g * ctx.alpha, None

        def setup_context(ctx, inputs, output):
            ctx.alpha = inputs[1]

        scale_py.register_autograd(backward, setup_context=setup_context)
        _SCALE_PY = scale_py
    return _SCALE_PY
