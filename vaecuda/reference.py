"""The math of every vaecuda op in plain torch ops: the test oracle, and the fallback when no
compiled kernel serves a device.

It mirrors csrc/vae_math.h: the same Philox4x32-10 stream and the same normal transform, evaluated
with the same correctly rounded float32 operations in the same order, so ``normals`` returns the very
bits the kernels use. The losses use torch's own exp/log1p, which agree with the kernels' polynomials
to a few ulp. Every function here is differentiable by torch's autograd and takes already-validated
inputs (vaecuda.ops validates).
"""

from __future__ import annotations

import torch

__all__ = [
    "philox4x32_10",
    "normals",
    "reparameterize",
    "reparameterize_with_kl",
    "gaussian_kl",
    "bernoulli_log_prob",
]

_MASK32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation (and loss) dtype: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of a * m, for int64 tensors a in [0, 2^32) and m < 2^32.

    Split m in 16-bit halves so every partial product fits in int64."""
    p_lo = a * (m & 0xFFFF)
    p_hi = a * (m >> 16)
    lo = (p_lo + ((p_hi & 0xFFFF) << 16)) & _MASK32
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi, lo


def philox4x32_10(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 of int64 tensors holding uint32 words: counter [..., 4], key [..., 2] -> [..., 4]."""
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = key.unbind(-1)
    for r in range(10):
        if r > 0:
            k0 = (k0 + _PHILOX_W[0]) & _MASK32
            k1 = (k1 + _PHILOX_W[1]) & _MASK32
        hi0, lo0 = _mulhilo(c0, _PHILOX_M[0])
        hi1, lo1 = _mulhilo(c2, _PHILOX_M[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack([c0, c1, c2, c3], -1)


# float32 constants of the normal transform, exactly as written in vae_math.h
def _f(hex_literal: str) -> float:
    return float.fromhex(hex_literal)


_LOG_SERIES = [_f("0x1.c71c72p-4"), _f("0x1.24924ap-3"), _f("0x1.99999ap-3"), _f("0x1.555556p-2"), 1.0]
_LN2_HI, _LN2_LO = _f("0x1.62e4p-1"), _f("0x1.7f7d1cp-20")
_HALF_PI = _f("0x1.921fb6p+0")
_SIN_SERIES = [_f("0x1.71de3ap-19"), _f("-0x1.a01a02p-13"), _f("0x1.111112p-7"), _f("-0x1.555556p-3"), 1.0]
_COS_SERIES = [_f("-0x1.27e4fcp-22"), _f("0x1.a01a02p-16"), _f("-0x1.6c16c2p-10"), _f("0x1.555556p-5"), -0.5, 1.0]


def _horner(coeffs: list[float], z: torch.Tensor) -> torch.Tensor:
    p = torch.full_like(z, coeffs[0])
    for c in coeffs[1:]:
        p = p * z + c
    return p


def _bm_log(u: torch.Tensor) -> torch.Tensor:
    bits = u.view(torch.int32)
    e = ((bits >> 23) & 0xFF) - 127
    mbits = (bits & 0x007FFFFF) | 0x3F800000
    big = mbits > 0x3FB504F3
    mbits = torch.where(big, mbits - 0x00800000, mbits)
    e = torch.where(big, e + 1, e)
    m = mbits.view(torch.float32)
    s = (m - 1.0) / (m + 1.0)
    logm = (s + s) * _horner(_LOG_SERIES, s * s)
    ef = e.to(torch.float32)
    return ef * _LN2_HI + (ef * _LN2_LO + logm)


def _box_muller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' Box-Muller on int64 tensors of uint32 words (see vae_math.h)."""
    u = a.to(torch.float32) * 2.0**-32 + 2.0**-33
    # torch's vectorized float32 sqrt is not always correctly rounded; float64 sqrt rounded to
    # float32 is (53 >= 2 * 24 + 2 bits), and equals the kernels' IEEE sqrt.
    r = torch.sqrt((-2.0 * _bm_log(u)).double()).float()
    quadrant = b >> 30
    t = ((b >> 6) & 0x00FFFFFF).to(torch.float32) * 2.0**-24
    upper = t > 0.5
    y = torch.where(upper, 1.0 - t, t) * _HALF_PI
    y2 = y * y
    s = _horner(_SIN_SERIES, y2) * y
    c = _horner(_COS_SERIES, y2)
    c, s = torch.where(upper, s, c), torch.where(upper, c, s)
    cq = torch.where(quadrant == 0, c, torch.where(quadrant == 1, -s, torch.where(quadrant == 2, -c, s)))
    sq = torch.where(quadrant == 0, s, torch.where(quadrant == 1, c, torch.where(quadrant == 2, -s, -c)))
    return r * cq, r * sq


def normals(rng_state: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """Standard normals of flat elements [first, first + count) of the stream rng_state = (seed, offset).

    float32, on rng_state's device; element n comes from Philox counter (n // 4, offset), key seed."""
    device = rng_state.device
    g0 = first >> 2
    groups = torch.arange(g0, (first + count + 3) >> 2, dtype=torch.int64, device=device)
    seed, offset = rng_state[0], rng_state[1]
    counter = torch.stack(
        [groups & _MASK32, (groups >> 32) & _MASK32,
         (offset & _MASK32).expand_as(groups), ((offset >> 32) & _MASK32).expand_as(groups)], -1)
    key = torch.stack([seed & _MASK32, (seed >> 32) & _MASK32]).expand(groups.shape[0], 2)
    w = philox4x32_10(counter, key)
    n0, n1 = _box_muller(w[:, 0], w[:, 1])
    n2, n3 = _box_muller(w[:, 2], w[:, 3])
    out = torch.stack([n0, n1, n2, n3], -1).reshape(-1)
    return out[first & 3:(first & 3) + count]


def _kl_std_normal_terms(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    sd = torch.exp(0.5 * logvar)  # e^logvar as sd^2, as the kernels take it (csrc/vae_math.h)
    return 0.5 * (sd * sd + mu * mu - 1.0 - logvar)


def reparameterize(mu, logvar, rng_state, n_samples=None):
    """z = mu + exp(logvar / 2) * eps, eps = normals(rng_state) over z's flat index."""
    shape = torch.broadcast_shapes(mu.shape, logvar.shape)
    z_shape = shape if n_samples is None else (n_samples, *shape)
    numel = 1
    for s in z_shape:
        numel *= s
    acc = _acc_dtype(mu.dtype)
    eps = normals(rng_state, 0, numel).reshape(z_shape).to(acc)
    z = mu.to(acc) + torch.exp(0.5 * logvar.to(acc)) * eps
    return z.to(mu.dtype)


def reparameterize_with_kl(mu, logvar, rng_state, n_samples=None):
    """(reparameterize(...), per-row KL(N(mu, e^logvar) || N(0, I))). Both from one cast of mu and
    logvar to the accumulation type, so their gradients add there and are rounded to a half dtype
    once, as the kernels do (two casts would round each term's gradient, then their sum)."""
    acc = _acc_dtype(mu.dtype)
    m, lv = mu.to(acc), logvar.to(acc)
    return reparameterize(m, lv, rng_state, n_samples).to(mu.dtype), gaussian_kl(m, lv)


def gaussian_kl(mu, logvar, prior_mu=None, prior_logvar=None, elementwise=False):
    """KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar)) per element, summed over the last dim unless
    elementwise; the prior defaults to N(0, I)."""
    acc = _acc_dtype(mu.dtype)
    mu, logvar = mu.to(acc), logvar.to(acc)
    if prior_mu is None:
        terms = _kl_std_normal_terms(mu, logvar)
    else:
        pm, pl = prior_mu.to(acc), prior_logvar.to(acc)
        d = mu - pm
        terms = 0.5 * (pl - logvar + torch.exp(logvar - pl) + d * d * torch.exp(-pl) - 1.0)
    shape = [mu.shape, logvar.shape] + ([] if prior_mu is None else [prior_mu.shape, prior_logvar.shape])
    terms = terms.expand(torch.broadcast_shapes(*shape))
    return terms if elementwise else terms.sum(-1)


def bernoulli_log_prob(logits, target, event_dims=1, probs=False):
    """log p(target | logits) = target * l - softplus(l), summed over the last event_dims dims.

    With probs=True, `logits` holds probabilities p and the terms are those of torch's
    binary_cross_entropy: target * max(log p, -100) + (1 - target) * max(log(1 - p), -100)."""
    acc = _acc_dtype(logits.dtype)
    l = logits.to(acc)
    x = target.to(acc)
    if probs:
        terms = _BernoulliProbsTerms.apply(l, x)
    else:
        # max(l, 0) and |l| have kinks at 0 that cancel in the value; autograd's one-sided choices
        # there (1 for clamp_min, 0 for abs) would give d/dl = x - 1 instead of x - sigmoid(0) =
        # x - 1/2. The where() term is 0 in value and moves the gradient at l == 0 alone by -1/2.
        pos = l.clamp_min(0) - 0.5 * torch.where(l == 0, l, 0.0)
        terms = x * l - pos - torch.log1p(torch.exp(-l.abs()))
    return terms.sum(dim=tuple(range(-event_dims, 0)))


def _clamped_log(log_v: torch.Tensor) -> torch.Tensor:
    """max(log_v, -100), NaN kept."""
    return log_v.clamp_min(-100.0)


class _BernoulliProbsTerms(torch.autograd.Function):
    """x max(log p, -100) + (1 - x) max(log(1 - p), -100) per element, with the gradients of torch's
    binary_cross_entropy (autograd of the formula would give NaN at p = 0 or 1): d/dp =
    (x - p) / max(p (1 - p), 1e-12), d/dx = max(log p, -100) - max(log(1 - p), -100). Values outside
    [0, 1] give NaN rather than an error, as in the kernels."""

    @staticmethod
    def forward(ctx, p, x):
        ctx.save_for_backward(p, x)
        return x * _clamped_log(torch.log(p)) + (1.0 - x) * _clamped_log(torch.log1p(-p))

    @staticmethod
    def backward(ctx, g):
        p, x = ctx.saved_tensors
        dp = dx = None
        if ctx.needs_input_grad[0]:
            dp = g * (x - p) / (p * (1.0 - p)).clamp_min(1e-12)
        if ctx.needs_input_grad[1]:
            dx = g * (_clamped_log(torch.log(p)) - _clamped_log(torch.log1p(-p)))
        return dp, dx
