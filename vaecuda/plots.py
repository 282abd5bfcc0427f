"""The PNGs of a run: samples, reconstructions beside their inputs, the latent space, loss curves."""

from __future__ import annotations

import json
import os

import torch


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _grid(images: torch.Tensor, rows: int) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] -> one [rows * H, cols * W] image (first channel), 1-pixel gutters."""
    n, _, h, w = images.shape
    cols = (n + rows - 1) // rows
    out = torch.full((rows * (h + 1) - 1, cols * (w + 1) - 1), 0.15)  # light gutters
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = images[i, 0]
    return out


@torch.no_grad()
def write_all(run_dir: str, model, splits, device, seed: int = 0) -> list[str]:
    plt = _plt()
    shape = splits.image_shape
    written = []

    def save(fig, name):
        path = os.path.join(run_dir, name)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    g = torch.Generator(device=device).manual_seed(seed)
    samples = model.sample(64, generator=g).float().cpu().reshape(-1, *shape)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(_grid(samples, 8).numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title("samples: z ~ N(0, I), pixel probabilities")
    ax.axis("off")
    save(fig, "samples.png")

    x = splits.test[:32]
    recon = model.reconstruct(x.to(device).reshape(-1, *model.event_shape)).float().cpu().reshape(-1, *shape)
    pairs = torch.stack([x.reshape(-1, *shape), recon], 1).reshape(-1, *shape)  # input, reconstruction, ...
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.imshow(_grid(pairs, 8).numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title("test inputs (left of each pair) and reconstructions from the posterior mean")
    ax.axis("off")
    save(fig, "reconstructions.png")

    xt = splits.test[:2000].to(device).reshape(-1, *model.event_shape)
    mu = model.encode(xt)[0].float().cpu()
    if mu.shape[1] > 2:  # the two principal directions of the codes
        centred = mu - mu.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        xy, axes = centred @ v[:2].T, ("PC 1", "PC 2")
    elif mu.shape[1] == 2:
        xy, axes = mu, ("z1", "z2")
    else:  # one latent dim: spread the points by their index
        xy, axes = torch.stack([mu[:, 0], torch.arange(len(mu), dtype=mu.dtype)], 1), ("z1", "test image")
    fig, ax = plt.subplots(figsize=(6, 5))
    labels = splits.test_labels[:2000].numpy() if splits.test_labels is not None else None
    xy = xy.numpy()
    if labels is not None:
        fig.colorbar(ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=6), ax=ax, label="digit")
    else:  # a source without labels (e.g. the binarized MNIST .npz)
        ax.scatter(xy[:, 0], xy[:, 1], s=6)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title("latent space: posterior means of test images")
    save(fig, "latent.png")

    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    rows = [json.loads(line) for line in open(metrics_path)] if os.path.exists(metrics_path) else []
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        ep = [r["epoch"] for r in rows]
        ax.plot(ep, [r["train_loss"] for r in rows], label="train loss (negative bound)")
        ax.plot(ep, [-r["valid_elbo"] for r in rows], label="valid negative ELBO")
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per image")
        ax.legend()
        save(fig, "curves.png")
    return written
