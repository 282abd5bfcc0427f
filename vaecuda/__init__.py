"""vaecuda: fused loss ops for training variational autoencoders in PyTorch.

    z = vaecuda.reparameterize(mu, logvar)                 # z = mu + exp(logvar / 2) * eps
    kl = vaecuda.gaussian_kl(mu, logvar)                   # KL(q || N(0, I)) per row
    ll = vaecuda.bernoulli_log_prob(logits, x)             # log p(x | z) per row
    loss = (kl - ll).mean()                                # the negative ELBO

See README.md for shapes, dtypes, backends and build switches.
"""

from ._backend import backend_info
from .ops import (bernoulli_log_prob, bernoulli_log_prob_from_probs, gaussian_kl, reparameterize,
                  reparameterize_with_kl, rng_state)

__version__ = "0.1.0"

__all__ = [
    "reparameterize",
    "reparameterize_with_kl",
    "gaussian_kl",
    "bernoulli_log_prob",
    "bernoulli_log_prob_from_probs",
    "rng_state",
    "backend_info",
    "__version__",
]
