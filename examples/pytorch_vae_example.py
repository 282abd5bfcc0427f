"""The canonical PyTorch VAE example (784-400-20 MLP, sigmoid decoder, Adam 1e-3, batch 128), trained
twice side by side from the same weights on the same batches: once with its usual loss, once with
vaecuda. Only two functions change (marked "vaecuda" below); the model stays as it is.

    python examples/pytorch_vae_example.py                      # scikit-learn's digits, offline
    python examples/pytorch_vae_example.py --data mnist.npz --epochs 10

Prints both loss curves (per epoch, nats per image) and the time per training step of each.
"""

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

import vaecuda
from vaecuda import data


class VAE(nn.Module):
    """The example's model: encoder P-400-(20, 20), decoder 20-400-P ending in a sigmoid."""

    def __init__(self, pixels=784, hidden=400, latent=20):
        super().__init__()
        self.pixels = pixels
        self.fc1, self.fc21, self.fc22 = nn.Linear(pixels, hidden), nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.fc3, self.fc4 = nn.Linear(latent, hidden), nn.Linear(hidden, pixels)

    def encode(self, x):
        h = F.relu(self.fc1(x))
        return self.fc21(h), self.fc22(h)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        return mu + std * torch.randn_like(std)

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, self.pixels))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    """The example's loss: reconstruction BCE plus the KL to N(0, I), summed over the batch."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, recon_x.shape[-1]), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


# -- vaecuda: the two functions that change ----------------------------------------------------------
class FusedVAE(VAE):
    def reparameterize(self, mu, logvar):
        return vaecuda.reparameterize(mu, logvar)


def fused_loss_function(recon_x, x, mu, logvar):
    return (vaecuda.gaussian_kl(mu, logvar, reduction="sum")
            - vaecuda.bernoulli_log_prob_from_probs(recon_x, x.view(-1, recon_x.shape[-1]), reduction="sum"))
# -----------------------------------------------------------------------------------------------------


def evaluate(model, loss_fn, splits, device):
    """The loss per test image (one noise draw per image)."""
    total = 0.0
    for x in splits.batches("test", 1000):
        x = x.to(device)
        recon, mu, logvar = model(x)
        total += loss_fn(recon, x, mu, logvar).item()
    return total / len(splits.test)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits", help="'digits', a binarized MNIST .npz, or a folder of MNIST files")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    splits = data.load(args.data, seed=args.seed)
    device = torch.device(args.device)
    usual = VAE(splits.pixels).to(device)
    fused = FusedVAE(splits.pixels).to(device)
    fused.load_state_dict(usual.state_dict())
    runs = {"usual loss": (usual, loss_function), "vaecuda": (fused, fused_loss_function)}
    opts = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, (m, _) in runs.items()}
    seconds = {name: 0.0 for name in runs}
    steps = 0
    print(f"{splits.name}: {len(splits.train)} training images of {splits.pixels} pixels | {device} | "
          f"vaecuda backend: {vaecuda.backend_info()['devices'][device.type]['backend']}")
    print(f"{'epoch':>5}  " + "  ".join(f"{name + ' train':>18}{name + ' test':>16}" for name in runs))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for epoch in range(1, args.epochs + 1):
        totals = {name: 0.0 for name in runs}
        order = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        for x in splits.batches("train", args.batch_size, shuffle=True, generator=order):
            x = x.to(device)
            steps += 1
            for name, (model, loss_fn) in runs.items():  # alternate: a noisy machine slows both alike
                sync()
                t = time.perf_counter()
                recon, mu, logvar = model(x)
                loss = loss_fn(recon, x, mu, logvar)
                opts[name].zero_grad()
                loss.backward()
                opts[name].step()
                sync()
                if steps > 1:  # the first step pays one-time set-up (CUDA context, cuBLAS), whichever runs first
                    seconds[name] += time.perf_counter() - t
                totals[name] += loss.item()
        with torch.no_grad():
            tests = {name: evaluate(model, loss_fn, splits, device) for name, (model, loss_fn) in runs.items()}
        print(f"{epoch:>5}  " + "  ".join(f"{totals[n] / len(splits.train):>18.2f}{tests[n]:>16.2f}" for n in runs))
    timed = max(steps - 1, 1)
    print(f"time per training step (the first of {steps} not timed): "
          + ", ".join(f"{n} {seconds[n] / timed * 1e3:.2f} ms" for n in runs)
          + (f" (vaecuda {seconds['usual loss'] / seconds['vaecuda']:.2f}x)" if seconds["vaecuda"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
