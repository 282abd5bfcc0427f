"""Reference VAEs that run their whole loss path through vaecuda's fused ops.

    model = vaecuda.models.VAE.pytorch_example()           # 784-400-20 ReLU, as the canonical example
    loss = model.loss(x)                                   # negative ELBO, mean over the batch
    loss.backward()

Models: ``VAE`` (MLP encoder/decoder) and ``ConvVAE`` (images ``[B, C, H, W]``). Both have a diagonal
Gaussian encoder q(z|x) = N(mu, diag(exp(logvar))), a N(0, I) prior and a Bernoulli decoder p(x|z)
giving logits.

``ops`` picks who computes the loss math, with one model and one set of weights:
  "fused"      vaecuda's ops (compiled kernels, or the reference fallback: see vaecuda.backend_info());
  "reference"  vaecuda.reference: the same math and the same noise in plain torch ops;
  "eager"      the usual PyTorch idiom (randn noise, binary_cross_entropy_with_logits).
All three draw the same noise for the same int seed (vaecuda's Philox stream), so they compute the
same numbers up to float rounding; with ``seed=None`` "eager" draws torch.randn, as a training loop
written without vaecuda does (that is what the benchmarks compare against).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import ops as _ops
from . import reference as _ref

__all__ = ["VAE", "ConvVAE", "LOSS_OPS"]

LOSS_OPS = ("fused", "reference", "eager")
_LOG_2PI = math.log(2 * math.pi)
_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}


# ---------------------------------------------------------------------------------------------------
# the three ways of computing the loss math: sample (+ KL to N(0, I)) and the Bernoulli log-likelihood
def _sample_with_kl(ops: str, mu, logvar, n_samples=None, seed=None):
    """(z, per-row KL(q || N(0, I))): z is [*batch, D], or [K, *batch, D] for n_samples=K."""
    if ops == "fused":
        return _ops.reparameterize_with_kl(mu, logvar, n_samples=n_samples, seed=seed)
    if ops == "reference":
        return _ref.reparameterize_with_kl(mu, logvar, _ops.rng_state(seed, device=mu.device), n_samples)
    shape = mu.shape if n_samples is None else (n_samples, *mu.shape)
    if seed is None:
        eps = torch.randn(shape, dtype=mu.dtype, device=mu.device)
    else:  # a fixed seed means vaecuda's noise, so the three can be compared value for value
        eps = _fixed_noise(seed, shape, mu)
    z = mu + torch.exp(0.5 * logvar) * eps
    return z, 0.5 * (torch.exp(logvar) + mu * mu - 1.0 - logvar).sum(-1)


@torch.compiler.disable  # made eagerly: torch.compile of the Philox reference is slow and not the point
def _fixed_noise(seed, shape, like: torch.Tensor) -> torch.Tensor:
    return _ref.normals(_ops.rng_state(seed, device=like.device), 0, math.prod(shape)).reshape(shape).to(like.dtype)


def _chunk_key(seed, c: int, device):
    """The noise key of chunk c of a multi-chunk estimate: distinct for every chunk."""
    if seed is None:
        return None  # a fresh draw from torch's generator
    return _ops.rng_state(seed, c, device)  # an int seed's key (seed, c); a key tensor's offset + c


def _log_px(ops: str, logits, x, event_dims: int):
    """Per-row log p(x | logits); x broadcasts over leading sample dims of logits."""
    if ops == "fused":
        return _ops.bernoulli_log_prob(logits, x, event_dims=event_dims)
    if ops == "reference":
        return _ref.bernoulli_log_prob(logits, x, event_dims)
    dims = tuple(range(-event_dims, 0))
    return -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype).expand_as(logits),
                                               reduction="none").sum(dims)


def _mlp(sizes, activation: str, last_activation=False) -> nn.Sequential:
    act = _ACTIVATIONS[activation]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(act())
    return nn.Sequential(*layers)


class _VAEBase(nn.Module):
    """Objectives and uses shared by the MLP and conv VAEs; subclasses define encode/decode."""

    event_dims: int
    latent: int

    def __init__(self, ops: str):
        super().__init__()
        self.ops = ops

    @property
    def ops(self) -> str:
        return self._ops

    @ops.setter
    def ops(self, value: str):
        if value not in LOSS_OPS:
            raise ValueError(f"ops must be one of {', '.join(LOSS_OPS)}, got {value!r}")
        self._ops = value

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # -> mu, logvar [B, latent]
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # [*, latent] -> logits [*, *event]
        raise NotImplementedError

    def _check_x(self, x: torch.Tensor):
        event = self.event_shape
        if not isinstance(x, torch.Tensor) or x.dim() != len(event) + 1 or tuple(x.shape[1:]) != event:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__}: x must have shape [B, {', '.join(map(str, event))}], got {got}")

    def forward(self, x: torch.Tensor, **kw) -> torch.Tensor:
        """``model(x)`` is the training loss, ``loss(x, **kw)``; wrappers such as DDP call this."""
        return self.loss(x, **kw)

    # -- objectives ----------------------------------------------------------------------------------
    def elbo(self, x: torch.Tensor, *, beta: float = 1.0, seed=None) -> torch.Tensor:
        """Per-row ELBO log p(x|z) - beta * KL(q(z|x) || p(z)), one sample of z, analytic KL: [B] (nats)."""
        self._check_x(x)
        mu, logvar = self.encode(x)
        z, kl = _sample_with_kl(self.ops, mu, logvar, seed=seed)
        return _log_px(self.ops, self.decode(z), x, self.event_dims) - beta * kl

    def loss(self, x: torch.Tensor, *, beta: float = 1.0, free_bits: float = 0.0, seed=None) -> torch.Tensor:
        """The training loss: negative ELBO averaged over the batch, with beta weighting and free bits
        (each latent dim's batch-mean KL counts at least ``free_bits`` nats). A scalar."""
        self._check_x(x)
        mu, logvar = self.encode(x)
        z, kl = _sample_with_kl(self.ops, mu, logvar, seed=seed)
        log_px = _log_px(self.ops, self.decode(z), x, self.event_dims)
        if free_bits > 0:  # a batch quantity: sum_j max(free_bits, mean over rows of KL_j)
            kl = (_ops.gaussian_kl(mu, logvar, reduction="mean", free_bits=free_bits) if self.ops == "fused"
                  else _ref.gaussian_kl(mu, logvar, elementwise=True).mean(0).clamp_min(free_bits).sum())
            return beta * kl - log_px.mean()
        return (beta * kl - log_px).mean()

    def _log_weights(self, x, mu, logvar, k: int, seed=None) -> torch.Tensor:
        """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for k samples: [k, B]. One sampling call
        for all k; x broadcasts against the [k, B, ...] logits, never copied k times."""
        z, _ = _sample_with_kl(self.ops, mu, logvar, n_samples=k, seed=seed)
        log_px = _log_px(self.ops, self.decode(z), x, self.event_dims)
        acc = torch.float64 if z.dtype == torch.float64 else torch.float32
        zf, muf, lvf = z.to(acc), mu.to(acc), logvar.to(acc)
        eps = (zf - muf) * torch.exp(-0.5 * lvf)
        d = z.shape[-1]
        log_pz = -0.5 * (zf * zf).sum(-1) - 0.5 * d * _LOG_2PI
        log_qz = -0.5 * (eps * eps + lvf).sum(-1) - 0.5 * d * _LOG_2PI
        return log_px + log_pz - log_qz

    def iwae(self, x: torch.Tensor, k: int = 50, *, seed=None) -> torch.Tensor:
        """Per-row importance-weighted bound log (1/k) sum_k w_k (Burda et al. 2016): [B] (nats)."""
        self._check_x(x)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        mu, logvar = self.encode(x)
        return torch.logsumexp(self._log_weights(x, mu, logvar, k, seed), 0) - math.log(k)

    # -- uses ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, k: int = 5000, *, max_elements: int = 1 << 24,
                       seed=None) -> torch.Tensor:
        """Importance-sampled estimate of log p(x) with k samples per row: [B] (nats, float32).

        Samples are drawn in chunks so that a chunk's logits hold at most ``max_elements`` values;
        memory stays bounded whatever k and B are. Chunk c draws its own noise: with an int seed the
        key (seed, c); with a key tensor (seed, offset), the key (seed, offset + c)."""
        self._check_x(x)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        mu, logvar = self.encode(x)
        per_sample = max(1, x.numel())
        chunk = max(1, min(k, max_elements // per_sample))
        total = None
        done = 0
        while done < k:
            n = min(chunk, k - done)
            lse = torch.logsumexp(self._log_weights(x, mu, logvar, n, _chunk_key(seed, done // chunk, x.device)), 0)
            total = lse if total is None else torch.logaddexp(total, lse)
            done += n
        return total - math.log(k)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images from the model: z ~ N(0, I), returns the decoder's pixel probabilities [n, *event]."""
        p = next(self.parameters())
        z = torch.randn(n, self.latent, generator=generator, device=p.device, dtype=p.dtype)
        return torch.sigmoid(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities decoded from the posterior mean: [B, *event]."""
        self._check_x(x)
        return torch.sigmoid(self.decode(self.encode(x)[0]))

    @torch.no_grad()
    def active_units(self, batches, threshold: float = 0.01) -> int:
        """Latent dims whose posterior mean varies over the data by more than ``threshold``
        (Var_x E_q[z_j] > threshold, Burda et al. 2016). ``batches``: a tensor or an iterable of them."""
        batches = [batches] if isinstance(batches, torch.Tensor) else batches
        n, s1, s2 = 0, 0.0, 0.0
        for x in batches:
            mu = self.encode(x)[0].double()
            n, s1, s2 = n + mu.shape[0], s1 + mu.sum(0), s2 + (mu * mu).sum(0)
        if n < 2:
            raise ValueError("active_units needs at least 2 data points")
        var = (s2 - s1 * s1 / n) / (n - 1)
        return int((var > threshold).sum())


class VAE(_VAEBase):
    """MLP VAE on flattened binary images ``[B, in_features]``.

    encoder: in_features -> hidden... -> 2 * latent (mu, logvar); decoder: latent -> reversed hidden
    -> in_features logits. Defaults match the canonical PyTorch example (784-400-20, ReLU);
    ``VAE.iwae_paper()`` is the IWAE paper's 1-layer net (784-200-200-50, tanh)."""

    event_dims = 1

    def __init__(self, in_features: int = 784, hidden=(400,), latent: int = 20, activation: str = "relu",
                 ops: str = "fused"):
        super().__init__(ops)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        hidden = tuple(hidden)
        self.in_features, self.hidden, self.latent, self.activation = in_features, hidden, latent, activation
        self.encoder = _mlp((in_features, *hidden, 2 * latent), activation)
        self.decoder = _mlp((latent, *reversed(hidden), in_features), activation)

    @classmethod
    def pytorch_example(cls, in_features: int = 784, **kw) -> "VAE":
        return cls(in_features, (400,), 20, "relu", **kw)

    @classmethod
    def iwae_paper(cls, in_features: int = 784, **kw) -> "VAE":
        return cls(in_features, (200, 200), 50, "tanh", **kw)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

    def config(self) -> dict:
        return {"arch": "mlp", "in_features": self.in_features, "hidden": list(self.hidden),
                "latent": self.latent, "activation": self.activation}

    def encode(self, x):
        mu, logvar = self.encoder(x.to(self.encoder[0].weight.dtype)).chunk(2, -1)
        return mu, logvar

    def decode(self, z):
        return self.decoder(z)


class ConvVAE(_VAEBase):
    """Convolutional VAE on binary images ``[B, C, H, W]`` (H and W divisible by 4: 8x8 digits, 28x28 MNIST).

    encoder: two stride-2 3x3 convs (channels, 2 * channels) -> linear to 2 * latent; decoder: linear
    -> two stride-2 4x4 transposed convs -> C logit maps."""

    event_dims = 3

    def __init__(self, image_shape=(1, 28, 28), channels: int = 32, latent: int = 16,
                 activation: str = "relu", ops: str = "fused"):
        super().__init__(ops)
        c, h, w = image_shape
        if h % 4 or w % 4:
            raise ValueError(f"ConvVAE: image height and width must be divisible by 4, got {h}x{w}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        act = _ACTIVATIONS[activation]
        self.image_shape, self.channels, self.latent, self.activation = (c, h, w), channels, latent, activation
        self._grid = (2 * channels, h // 4, w // 4)
        flat = 2 * channels * (h // 4) * (w // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(c, channels, 3, 2, 1), act(), nn.Conv2d(channels, 2 * channels, 3, 2, 1), act(),
            nn.Flatten(), nn.Linear(flat, 2 * latent))
        self.decoder_in = nn.Sequential(nn.Linear(latent, flat), act())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1), act(), nn.ConvTranspose2d(channels, c, 4, 2, 1))

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.image_shape

    def config(self) -> dict:
        return {"arch": "conv", "image_shape": list(self.image_shape), "channels": self.channels,
                "latent": self.latent, "activation": self.activation}

    def encode(self, x):
        return self.encoder(x.to(self.encoder[0].weight.dtype)).chunk(2, -1)

    def decode(self, z):
        lead = z.shape[:-1]
        h = self.decoder_in(z.reshape(-1, z.shape[-1])).reshape(-1, *self._grid)
        return self.decoder(h).reshape(*lead, *self.image_shape)
