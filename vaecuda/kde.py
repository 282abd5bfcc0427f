"""The naive density estimator a VAE replaces: a kernel density estimate in pixel space.

p(x) = (1/N) sum_n prod_i Bernoulli(x_i; q_ni), q_ni = (1 - lam) c_ni + lam (1 - c_ni), one kernel per
training image c_n with bandwidth lam in (0, 0.5] (lam -> 0: the empirical distribution; lam = 0.5:
uniform noise). log p(x | c_n) is linear in x, so all pairs come from one matrix product per chunk.
"""

from __future__ import annotations

import math

import torch

DEFAULT_BANDWIDTHS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)


@torch.no_grad()
def log_likelihood(x: torch.Tensor, centres: torch.Tensor, bandwidth: float, *, chunk: int = 1024) -> torch.Tensor:
    """log p(x) under the kernel density estimate on ``centres`` ([N, P] in [0, 1]): [B] nats (float64
    accumulation). ``x`` may be binary or soft ([B, P] in [0, 1])."""
    if not 0.0 < bandwidth <= 0.5:
        raise ValueError(f"bandwidth must be in (0, 0.5], got {bandwidth}")
    c = centres.double()
    q = (1.0 - bandwidth) * c + bandwidth * (1.0 - c)
    w = (torch.log(q) - torch.log1p(-q)).T.contiguous()   # [P, N]
    b = torch.log1p(-q).sum(1)                             # [N]
    out = []
    for i in range(0, x.shape[0], chunk):
        logp = x[i:i + chunk].double() @ w + b             # [chunk, N]
        out.append(torch.logsumexp(logp, 1) - math.log(c.shape[0]))
    return torch.cat(out) if out else x.new_zeros(0, dtype=torch.float64)


def fit_bandwidth(train: torch.Tensor, valid: torch.Tensor, bandwidths=DEFAULT_BANDWIDTHS) -> tuple[float, dict]:
    """The bandwidth with the highest mean validation log-likelihood, and every candidate's score."""
    scores = {lam: float(log_likelihood(valid, train, lam).mean()) for lam in bandwidths}
    return max(scores, key=scores.get), scores
