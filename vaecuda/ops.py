"""The public ops. Each validates its arguments once (clear errors, before any kernel runs), picks the
compiled op or the reference (vaecuda._backend), and applies the reduction.

Shapes: latents are ``[*batch, D]``; images are ``[*batch, *event]``. Inputs may be float32, float64,
float16 or bfloat16 (half types are computed and accumulated in float32), contiguous or not, and
broadcast as in torch. Losses come back in float32 (float64 for float64 inputs); samples and
gradients in the inputs' dtype. Mixed dtypes among mu, logvar and the prior are refused, not
promoted (cast them to one dtype), except under autocast, where they are computed in float32.
"""

from __future__ import annotations

import math

import torch

from . import _backend
from . import reference as _ref

__all__ = [
    "reparameterize",
    "reparameterize_with_kl",
    "gaussian_kl",
    "bernoulli_log_prob",
    "bernoulli_log_prob_from_probs",
    "rng_state",
]

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_TARGETS = _FLOATS + (torch.uint8, torch.bool)
_REDUCTIONS = ("none", "sum", "mean")
_Tensor = torch.Tensor
_U64 = 1 << 64

def _compiled(t: torch.Tensor) -> bool:
    """Whether the compiled kernels serve t's device (a precomputed answer for CPU tensors)."""
    return (_CPU_COMPILED and t.is_cpu) or _backend.use_compiled(t.device)


_CPU_COMPILED = _backend.MODE != "reference" and "cpu" in _backend._KERNEL_DEVICES

if _backend._C is not None:
    from . import _registrations  # noqa: F401  (fake kernels for torch.compile / opcheck)

    _kl_op = torch.ops.vaecuda.gaussian_kl.default
    _reparam_op = torch.ops.vaecuda.reparameterize.default
    _reparam_kl_op = torch.ops.vaecuda.reparameterize_with_kl.default
    _bernoulli_op = torch.ops.vaecuda.bernoulli_log_prob.default


# ---------------------------------------------------------------------------------------------------
# validation
def _fail(op: str, msg: str, exc=ValueError):
    raise exc(f"vaecuda.{op}: {msg}")


def _check_float(op: str, name: str, t, like=None, like_name: str = "mu"):
    if not isinstance(t, torch.Tensor):
        _fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    if t.dtype not in _FLOATS:
        _fail(op, f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}", TypeError)
    if like is not None:
        if t.dtype != like.dtype:
            _fail(op, f"{name} has dtype {t.dtype} but {like_name} has {like.dtype}; cast them to one dtype",
                  TypeError)
        if t.device != like.device:
            _fail(op, f"{name} is on {t.device} but {like_name} is on {like.device}")


def _same_shape(a: torch.Size, b: torch.Size) -> bool:
    """a == b, lengths first: a tuple comparison of sizes of different lengths would compare their
    leading sizes, which under torch.compile / torch.export adds a guard on a symbolic batch size
    (say batch != 2) that can specialize a graph or fail an export."""
    return len(a) == len(b) and a == b


def _broadcast(op: str, names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> torch.Size:
    try:
        return torch.broadcast_shapes(*(t.shape for t in tensors))
    except RuntimeError:
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(names, tensors))
        _fail(op, f"shapes do not broadcast: {shapes}")


def _latents(op: str, mu, logvar, prior_mu=None, prior_logvar=None):
    """mu, logvar and the prior as the kernels take them: validated, and computed in float32 where
    autocast mixes their dtypes (_autocast_unify). The common case, plain tensors of one float dtype,
    shape and device and no prior, costs a few attribute reads (this runs on every call)."""
    if (prior_mu is None and prior_logvar is None and type(mu) is _Tensor and type(logvar) is _Tensor
            and mu.dtype in _FLOATS and logvar.dtype is mu.dtype and _same_shape(logvar.shape, mu.shape)
            and mu.dim() > 0 and logvar.device == mu.device):
        return mu, logvar, None, None
    mu, logvar, prior_mu, prior_logvar = _autocast_unify(mu, logvar, prior_mu, prior_logvar)
    _check_float(op, "mu", mu)
    _check_float(op, "logvar", logvar, mu)
    names, tensors = ("mu", "logvar"), (mu, logvar)
    if prior_mu is not None:
        _check_float(op, "prior_mu", prior_mu, mu)
        names, tensors = names + ("prior_mu",), tensors + (prior_mu,)
    if prior_logvar is not None:
        _check_float(op, "prior_logvar", prior_logvar, mu)
        names, tensors = names + ("prior_logvar",), tensors + (prior_logvar,)
    shape = mu.shape if all(_same_shape(t.shape, mu.shape) for t in tensors) else _broadcast(op, names, tensors)
    if len(shape) == 0:
        _fail(op, "mu must have at least one dim (the latent dim), got a scalar")
    return mu, logvar, prior_mu, prior_logvar


def _autocast_unify(*tensors):
    """Under autocast, latents of mixed float dtypes (a bf16 mu from an autocast Linear beside a
    float32 learned logvar or prior) are computed in float32, autocast's policy for losses; outside
    autocast mixed dtypes are refused (see _check_float), and so is a float64 tensor beside others under
    autocast (left as they are, so that the error names the dtypes the caller passed). Returns the
    tensors, cast or not."""
    ts = [t for t in tensors if isinstance(t, _Tensor)]  # nn.Parameter included
    if len(ts) < 2 or all(t.dtype is ts[0].dtype for t in ts):
        return tensors
    if (all(t.dtype in _FLOATS and t.dtype != torch.float64 for t in ts)
            and torch.is_autocast_enabled(ts[0].device.type)):
        return tuple(t.float() if isinstance(t, _Tensor) else t for t in tensors)
    return tensors


def _check_reduction(op: str, reduction):
    if reduction not in _REDUCTIONS:
        _fail(op, f"reduction must be one of 'none', 'sum', 'mean', got {reduction!r}")


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return x
    return x.sum() if reduction == "sum" else x.mean()


def _check_n_samples(op: str, n_samples):
    if n_samples is not None and (isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1):
        _fail(op, f"n_samples must be None or an int >= 1, got {n_samples!r}")


# ---------------------------------------------------------------------------------------------------
# randomness
def rng_state(seed: int | torch.Tensor | None = None, offset: int = 0, device=None) -> torch.Tensor:
    """The (seed, offset) pair that keys the sampling noise, as an int64 tensor of 2 on ``device``.

    ``seed=None`` draws both from torch's generator for that device (so ``torch.manual_seed``
    governs it, and a captured CUDA graph draws afresh on every replay); an int seed (any 64-bit
    value) with an int offset gives the same noise on every run and device. A tensor is taken as the
    state itself (int64, two elements, on ``device``): made once, it can be captured in a CUDA graph
    or updated in place between steps. ``offset`` is added (mod 2^64) to the offset word of a drawn
    key or a key tensor too (a new tensor; the key tensor is left as it is): distinct offsets give
    disjoint streams, e.g. ``offset=rank`` on ranks seeded alike."""
    _check_u64("offset", offset)
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 2 or seed.dim() != 1:
            exc = TypeError if seed.dtype != torch.int64 else ValueError  # a dtype, or a shape
            raise exc(f"vaecuda.rng_state: a seed tensor must be int64 of shape (2,) (seed, offset), got "
                      f"{seed.dtype} of shape {tuple(seed.shape)}")
        if device is not None and seed.device != (device if type(device) is torch.device else torch.device(device)):
            raise ValueError(f"vaecuda.rng_state: the seed tensor is on {seed.device} but the inputs are on {device}")
        return seed if offset == 0 else _add_offset(seed.clone(), offset)
    if seed is None:
        state = torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, device=device)
        return state if offset == 0 else _add_offset(state, offset)
    _check_u64("seed", seed)
    seed, offset = _signed(seed), _signed(offset)
    if device is None or torch.device(device).type == "cpu":
        return torch.tensor([seed, offset], dtype=torch.int64, device=device)
    # on an accelerator, fill kernels that take the values as arguments: torch.tensor(..., device=)
    # would copy from pageable host memory, which waits for the stream (a hidden sync)
    state = torch.full((2,), seed, dtype=torch.int64, device=device)
    state[1].fill_(offset)
    return state


def _check_u64(name: str, v) -> None:
    """An int seed or offset: any 64-bit pattern, written in [-2^63, 2^64)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"vaecuda.rng_state: {name} must be an int, got {type(v).__name__}")
    if not -(2**63) <= v < _U64:
        raise ValueError(f"vaecuda.rng_state: {name} must fit in 64 bits, got {v}")


def _signed(v: int) -> int:
    """The int64 (two's complement) holding the 64-bit pattern of v in [-2^63, 2^64)."""
    return v - _U64 if v >= 2**63 else v


def _add_offset(state: torch.Tensor, offset: int) -> torch.Tensor:
    state[1] += _signed(offset)  # int64 arithmetic wraps: mod 2^64; a kernel argument, no host sync
    return state


# ---------------------------------------------------------------------------------------------------
# ops
def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, *, n_samples: int | None = None,
                   seed: int | torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """Reparameterized sample z = mu + exp(logvar / 2) * eps, eps ~ N(0, 1), differentiable in mu and logvar.

    mu, logvar: ``[*batch, D]`` (broadcastable). Returns z in mu's dtype, shaped ``[*batch, D]``, or
    ``[n_samples, *batch, D]`` with ``n_samples=K`` (one read of mu/logvar for all K). eps is generated
    inside the kernel from Philox keyed by (seed, offset) and z's flat index, and regenerated in the
    backward, never stored. ``seed=None`` draws the key from torch's generator; an int or an
    int64 (seed, offset) tensor fixes it (see ``rng_state``)."""
    mu, logvar, _, _ = _latents("reparameterize", mu, logvar)
    _check_n_samples("reparameterize", n_samples)
    state = rng_state(seed, offset, mu.device)
    if _compiled(mu):
        return _reparam_op(mu, logvar, state, n_samples)
    return _ref.reparameterize(mu, logvar, state, n_samples)


def reparameterize_with_kl(mu: torch.Tensor, logvar: torch.Tensor, *, n_samples: int | None = None,
                           seed: int | torch.Tensor | None = None, offset: int = 0, reduction: str = "none"):
    """``(z, kl)`` from one pass: z as in ``reparameterize`` and KL(N(mu, e^logvar) || N(0, I)) summed
    over the last dim, per row ``[*batch]`` (``reduction="none"``), or summed / averaged over rows.
    kl is float32 (float64 for float64 inputs)."""
    mu, logvar, _, _ = _latents("reparameterize_with_kl", mu, logvar)
    _check_n_samples("reparameterize_with_kl", n_samples)
    _check_reduction("reparameterize_with_kl", reduction)
    state = rng_state(seed, offset, mu.device)
    if _compiled(mu):
        z, kl = _reparam_kl_op(mu, logvar, state, n_samples)
    else:
        z, kl = _ref.reparameterize_with_kl(mu, logvar, state, n_samples)
    return z, _reduce(kl, reduction)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor | None = None,
                prior_logvar: torch.Tensor | None = None, *, reduction: str = "none",
                free_bits: float = 0.0) -> torch.Tensor:
    """KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar)) of diagonal Gaussians, summed over the last dim.

    mu, logvar, prior_mu, prior_logvar: ``[*batch, D]``, broadcastable (the prior defaults to N(0, I);
    a missing prior_mu means 0, a missing prior_logvar means 0). Returns float32 (float64 for float64
    inputs): ``[*batch]`` for ``reduction="none"``, else the sum or mean over rows.

    ``free_bits=lam > 0`` (Kingma et al. 2016) replaces the KL by sum_j max(lam, KL_j), KL_j the
    batch mean of latent dim j's KL, so dims below lam nats get no gradient; it needs
    ``reduction="mean"`` (that value) or ``"sum"`` (times the number of rows)."""
    op = "gaussian_kl"
    mu, logvar, prior_mu, prior_logvar = _latents(op, mu, logvar, prior_mu, prior_logvar)
    _check_reduction(op, reduction)
    if isinstance(free_bits, bool) or not isinstance(free_bits, (int, float)) or not free_bits >= 0:
        _fail(op, f"free_bits must be a number >= 0, got {free_bits!r}")
    if free_bits > 0 and reduction == "none":
        _fail(op, "free_bits needs a batch reduction: use reduction='mean' or 'sum'")
    if (prior_mu is None) != (prior_logvar is None):  # the kernels take both or neither
        zero = mu.new_zeros(())
        prior_mu = zero if prior_mu is None else prior_mu
        prior_logvar = zero if prior_logvar is None else prior_logvar
    elementwise = free_bits > 0
    if _compiled(mu):
        kl = _kl_op(mu, logvar, prior_mu, prior_logvar, elementwise)
    else:
        kl = _ref.gaussian_kl(mu, logvar, prior_mu, prior_logvar, elementwise)
    if not elementwise:
        return _reduce(kl, reduction)
    rows = math.prod(kl.shape[:-1])
    per_row = kl.reshape(rows, kl.shape[-1])
    if reduction == "mean":  # no rows: NaN, the mean of nothing (as without free_bits), even with no dims
        clamped = per_row.mean(0).clamp_min(float(free_bits)).sum()
        return clamped if rows else clamped * float("nan")
    # "sum": rows times that; no rows: 0, a sum over nothing (as without free_bits)
    per_dim = per_row.mean(0) if rows else per_row.sum(0)
    return per_dim.clamp_min(float(free_bits)).sum() * rows


def bernoulli_log_prob(logits: torch.Tensor, target: torch.Tensor, *, event_dims: int = 1,
                       reduction: str = "none") -> torch.Tensor:
    """log p(target | logits) of independent Bernoullis, summed over the last ``event_dims`` dims.

    logits: ``[*batch, *event]`` float; target: float in [0, 1] (soft targets), bool or uint8,
    broadcastable to logits' shape (e.g. ``[B, P]`` against ``[K, B, P]`` logits, never copied K
    times). Computed stably as target * l - softplus(l). Returns float32 (float64 for float64
    logits), ``[*batch]`` or reduced over it. Gradients flow to logits and to float targets."""
    return _bernoulli("bernoulli_log_prob", "logits", logits, target, event_dims, reduction, False)


def bernoulli_log_prob_from_probs(probs: torch.Tensor, target: torch.Tensor, *, event_dims: int = 1,
                                  reduction: str = "none") -> torch.Tensor:
    """``bernoulli_log_prob`` for models that output probabilities (a final sigmoid), with the terms
    of ``F.binary_cross_entropy``: target * max(log p, -100) + (1 - target) * max(log(1 - p), -100),
    so p = 0 or 1 stays finite; the gradient is torch's, (target - p) / max(p (1 - p), 1e-12).

    ``-bernoulli_log_prob_from_probs(p, x, reduction="sum")`` equals
    ``F.binary_cross_entropy(p, x, reduction="sum")``. probs outside [0, 1] give NaN (not an error:
    checking would read the values back to the host). Shapes, dtypes and reductions as
    ``bernoulli_log_prob``; prefer logits where the model allows it (stabler and faster)."""
    return _bernoulli("bernoulli_log_prob_from_probs", "probs", probs, target, event_dims, reduction, True)


def _bernoulli(op: str, name: str, logits, target, event_dims, reduction, probs: bool) -> torch.Tensor:
    _check_float(op, name, logits)
    if not isinstance(target, torch.Tensor):
        _fail(op, f"target must be a torch.Tensor, got {type(target).__name__}", TypeError)
    if target.dtype not in _TARGETS:
        _fail(op, f"target must be a float tensor, bool or uint8, got {target.dtype}", TypeError)
    if target.device != logits.device:
        _fail(op, f"target is on {target.device} but {name} is on {logits.device}")
    if isinstance(event_dims, bool) or not isinstance(event_dims, int) or not 1 <= event_dims <= logits.dim():
        _fail(op, f"event_dims must be an int in [1, {name}.dim()={logits.dim()}], got {event_dims!r}")
    if not _same_shape(target.shape, logits.shape) and not _same_shape(
            _broadcast(op, (name, "target"), (logits, target)), logits.shape):
        _fail(op, f"target of shape {tuple(target.shape)} must broadcast to {name}' shape {tuple(logits.shape)}")
    _check_reduction(op, reduction)
    if _compiled(logits):
        out = _bernoulli_op(logits, target, event_dims, probs)
    else:
        out = _ref.bernoulli_log_prob(logits, target, event_dims, probs)
    return _reduce(out, reduction)
