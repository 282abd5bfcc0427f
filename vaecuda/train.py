"""Training and evaluating the reference VAEs: the engine behind ``python -m vaecuda train|evaluate``.

A run lives in one folder: config.json, metrics.jsonl (one line per epoch), checkpoint.pt (rewritten
atomically after every epoch), PNGs, and evaluation.json after ``evaluate``. Every random choice is a
function of (seed, epoch, step): batch order and dynamic binarization use a generator seeded per
epoch, and step t's noise is vaecuda's stream (seed, offset=t). So a run resumed from its checkpoint
continues exactly as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field

import torch

from . import data as _data
from . import kde as _kde
from . import models
from ._progress import progress as _progress
from .ops import rng_state

PRESETS = {
    "pytorch-example": dict(arch="mlp", hidden=[400], latent=20, activation="relu"),
    "iwae-paper": dict(arch="mlp", hidden=[200, 200], latent=50, activation="tanh"),
}
_VALID_OFFSET = 1 << 40  # noise offsets of evaluation passes, far from the training steps'


class RunError(RuntimeError):
    """A run folder or checkpoint that cannot be used as asked."""


@dataclass
class Config:
    data: str = "digits"
    binarize: str = "fixed"
    seed: int = 0
    arch: str = "mlp"                  # mlp | conv
    hidden: list = field(default_factory=lambda: [400])
    latent: int = 20
    activation: str = "relu"
    channels: int = 32                 # conv only
    objective: str = "elbo"            # elbo | iwae
    k: int = 50                        # IWAE samples
    beta: float = 1.0
    warmup_epochs: float = 0.0         # KL warm-up: beta grows linearly from 0 over these epochs
    free_bits: float = 0.0
    epochs: int = 10                   # (None on resume: the run's own)
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"      # constant | cosine | exponential
    lr_decay: float = 0.97             # per epoch, for exponential
    ops: str = "fused"                 # fused | reference | eager
    device: str = "auto"

    def check(self):
        choices = {"binarize": _data.BINARIZE, "arch": ("mlp", "conv"), "objective": ("elbo", "iwae"),
                   "lr_schedule": ("constant", "cosine", "exponential"), "ops": models.LOSS_OPS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "latent", "k"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.channels < 1 or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths and channels must be integers >= 1, got hidden {list(self.hidden)}, "
                             f"channels {self.channels}")
        if self.lr <= 0 or self.lr_decay <= 0 or self.beta < 0 or self.free_bits < 0 or self.warmup_epochs < 0:
            raise ValueError("lr and lr_decay must be > 0; beta, free_bits and warmup_epochs >= 0")
        if self.objective == "iwae" and (self.beta != 1.0 or self.warmup_epochs > 0 or self.free_bits > 0):
            raise ValueError("beta, warmup_epochs and free_bits shape the ELBO objective; the IWAE bound "
                             "takes none of them (drop them, or use objective elbo)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2^32), got {self.seed!r}")
        device_of(self)  # an unknown or absent device fails here, before anything is written
        return self


def device_of(cfg: Config) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu or cuda[:n], got {cfg.device!r}") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"device {cfg.device!r}: no such CUDA device here "
                         f"({torch.cuda.device_count() if torch.cuda.is_available() else 0} visible)")
    return device


def build_model(cfg: Config, image_shape) -> models._VAEBase:
    if cfg.arch == "conv":
        return models.ConvVAE(tuple(image_shape), cfg.channels, cfg.latent, cfg.activation, ops=cfg.ops)
    return models.VAE(int(math.prod(image_shape)), tuple(cfg.hidden), cfg.latent, cfg.activation, ops=cfg.ops)


def _shape_batch(model, x):
    return x.reshape(x.shape[0], *model.event_shape)


def _lr_scheduler(opt, cfg: Config):
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.lr_schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)


def _write_atomic(path: str, text: str):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _save_atomic(obj, path: str):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def mean_elbo(model, splits, split: str, device, batch_size: int = 1000, offset: int = _VALID_OFFSET) -> float:
    """Mean per-image ELBO (nats) of a split, one sample per image, noise keyed by ``offset``."""
    total, n = 0.0, 0
    for i, x in enumerate(splits.batches(split, batch_size, generator=torch.Generator().manual_seed(offset))):
        x = _shape_batch(model, x.to(device))
        total += float(model.elbo(x, seed=rng_state(0, offset + i, device)).sum())
        n += x.shape[0]
    return total / max(n, 1)


def train(cfg: Config, out_dir: str, *, resume: bool = False, stop_after: int | None = None, progress: bool = True,
          log=print) -> list[dict]:
    """Train (or, with resume=True, continue) the run in ``out_dir``; returns the metrics of every epoch.

    ``stop_after=N`` stops after epoch N (a time-limited job); resuming then continues exactly. A
    resumed run may be given more epochs, except under the cosine schedule, which --epochs fixes."""
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be >= 1 (an epoch), got {stop_after}")
    cfg_path, ckpt_path = os.path.join(out_dir, "config.json"), os.path.join(out_dir, "checkpoint.pt")
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    fresh_restart = resume and not os.path.exists(ckpt_path) and os.path.exists(cfg_path)
    if resume and not os.path.exists(cfg_path):
        raise RunError(f"{out_dir}: no run to resume (no config.json)")
    if resume:  # a run stopped before its first checkpoint restarts from epoch 1 with its own config
        saved = Config(**json.load(open(cfg_path)))
        epochs = saved.epochs if cfg.epochs is None else cfg.epochs  # a resumed run may run longer
        if saved.lr_schedule == "cosine" and epochs != saved.epochs:
            raise RunError(f"{out_dir}: its cosine learning-rate schedule spans {saved.epochs} epochs; "
                           f"resume it with --epochs {saved.epochs}")
        cfg = dataclasses.replace(saved, epochs=epochs, device=cfg.device)
    elif os.path.exists(cfg_path):
        raise RunError(f"{out_dir} already holds a run (config.json): use --resume to continue it, or another --out")
    if cfg.epochs is None:
        cfg = dataclasses.replace(cfg, epochs=Config.epochs)
    cfg.check()
    device = device_of(cfg)
    splits = _data.load(cfg.data, seed=cfg.seed, binarize=cfg.binarize)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, splits.image_shape).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = _lr_scheduler(opt, cfg)
    start_epoch, step, history = 0, 0, []
    if fresh_restart:
        log(f"{out_dir}: no checkpoint yet, starting the run again from epoch 1")
        open(metrics_path, "w").close()
        _write_atomic(cfg_path, json.dumps(dataclasses.asdict(cfg), indent=1))
    elif resume:
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise RunError(f"{ckpt_path}: the checkpoint does not fit the run's architecture ({cfg.arch}, "
                           f"hidden {cfg.hidden}, latent {cfg.latent}): {str(e).splitlines()[0]}") from None
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        # the lines of epochs after the checkpoint (a stop between the metrics line and the save) go
        history = [json.loads(line) for line in open(metrics_path)][:start_epoch]
        _write_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in history))
        if start_epoch >= cfg.epochs:  # the run's config stays as it is: nothing was trained
            log(f"{out_dir}: already trained for {start_epoch} epochs (asked {cfg.epochs}); nothing to do")
            return history
        if cfg.epochs != saved.epochs:
            _write_atomic(cfg_path, json.dumps(dataclasses.asdict(cfg), indent=1))
    else:
        os.makedirs(out_dir, exist_ok=True)
        with open(cfg_path, "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=1)
        open(metrics_path, "w").close()
    steps_per_epoch = math.ceil(len(splits.train) / cfg.batch_size)
    log(f"run {out_dir}: {cfg.arch} {cfg.hidden if cfg.arch == 'mlp' else cfg.channels}-{cfg.latent} "
        f"{cfg.activation}, {cfg.objective}{f' k={cfg.k}' if cfg.objective == 'iwae' else ''}, ops={cfg.ops}, "
        f"{splits.name} ({len(splits.train)} train), {device}, epochs {start_epoch + 1}..{cfg.epochs}")
    last = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    for epoch in range(start_epoch + 1, last + 1):
        model.train()
        t0, total, seen = time.perf_counter(), 0.0, 0
        order = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        bar = _progress(splits.batches("train", cfg.batch_size, shuffle=True, generator=order),
                        f"epoch {epoch}/{cfg.epochs}", total=steps_per_epoch, enabled=progress, leave=False)
        for x in bar:
            x = _shape_batch(model, x.to(device))
            beta = cfg.beta * (min(1.0, (step + 1) / (cfg.warmup_epochs * steps_per_epoch))
                               if cfg.warmup_epochs > 0 else 1.0)
            key = rng_state(cfg.seed, step, device)
            if cfg.objective == "iwae":
                loss = -model.iwae(x, cfg.k, seed=key).mean()
            else:
                loss = model.loss(x, beta=beta, free_bits=cfg.free_bits, seed=key)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise RunError(f"epoch {epoch}, step {step}: the loss is {value}; lower --lr or check the data")
            total, seen = total + value * x.shape[0], seen + x.shape[0]
            if hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(f"loss {value:.2f}")
        lr = opt.param_groups[0]["lr"]
        sched.step()
        model.eval()
        row = {"epoch": epoch, "step": step, "train_loss": total / seen,
               "valid_elbo": mean_elbo(model, splits, "valid", device), "lr": lr,
               "beta": beta if cfg.objective == "elbo" else None,  # the IWAE bound has none
               "seconds": round(time.perf_counter() - t0, 3)}
        history.append(row)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        _save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                      "epoch": epoch, "step": step, "config": dataclasses.asdict(cfg)}, ckpt_path)
        log(f"epoch {epoch:>4}  train loss {row['train_loss']:9.3f}  valid ELBO {row['valid_elbo']:9.3f}  "
            f"lr {lr:.2e}  {row['seconds']:.1f} s")
    return history


def load_run(run_dir: str, device=None):
    """(config, model with the checkpoint's weights, splits) of a run folder."""
    cfg_path, ckpt_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "checkpoint.pt")
    for p in (cfg_path, ckpt_path):
        if not os.path.exists(p):
            raise RunError(f"{run_dir}: not a run folder (no {os.path.basename(p)})")
    cfg = Config(**json.load(open(cfg_path)))
    if device is not None:
        cfg.device = device
    splits = _data.load(cfg.data, seed=cfg.seed, binarize=cfg.binarize)
    model = build_model(cfg, splits.image_shape).to(device_of(cfg))
    try:
        model.load_state_dict(torch.load(ckpt_path, map_location=device_of(cfg), weights_only=False)["model"])
    except (RuntimeError, KeyError) as e:
        raise RunError(f"{ckpt_path}: does not fit the run's architecture: {str(e).splitlines()[0]}") from None
    model.eval()
    return cfg, model, splits


@torch.no_grad()
def evaluate(run_dir: str, *, k: int = 5000, limit: int | None = None, kde: bool = True, device=None,
             progress: bool = True, log=print) -> dict:
    """Test ELBO, the importance-sampled test log-likelihood with k samples, active units, and the
    pixel-space kernel density estimate's test log-likelihood (bandwidth fit on validation data).
    Written to run_dir/evaluation.json."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    cfg, model, splits = load_run(run_dir, device)
    dev = device_of(cfg)
    if limit is not None and limit < len(splits.test):
        # a fixed random subset, the same for every run: test files are often sorted by class
        pick = torch.randperm(len(splits.test), generator=torch.Generator().manual_seed(0))[:limit]
        test = splits.test[pick.sort().values]
    else:
        test = splits.test
    binary = (lambda t, i: t if splits.binarize != "dynamic" else  # noqa: E731
              torch.bernoulli(t, generator=torch.Generator().manual_seed(cfg.seed * 3 + i)))
    test = binary(test, 2)  # dynamic binarization: one fixed draw per split, each split its own
    view = _data.Splits(splits.train, splits.valid, test, splits.image_shape, splits.name, "fixed")
    out = {"run": run_dir, "test_images": len(test), "k": k, "test_elbo": mean_elbo(model, view, "test", dev)}
    ll, batch = [], max(1, min(100, (1 << 22) // max(1, k)))
    chunks = range(0, len(test), batch)
    for j, i in enumerate(_progress(chunks, f"log p(x), k={k}", total=len(chunks), enabled=progress, leave=False)):
        x = _shape_batch(model, test[i:i + batch].to(dev))
        # batch j's key (seed, base + j * 2^20); its chunks add 0, 1, ... to the offset
        ll.append(model.log_likelihood(x, k=k, seed=rng_state(cfg.seed, _VALID_OFFSET * 2 + (j << 20), dev)).cpu())
    out["test_log_likelihood"] = float(torch.cat(ll).mean())
    out["test_nll"] = -out["test_log_likelihood"]
    out["active_units"] = model.active_units(_shape_batch(model, test.to(dev)))
    out["latent"] = cfg.latent
    if kde:
        train_x, valid_x = binary(splits.train, 0), binary(splits.valid, 1)
        lam, scores = _kde.fit_bandwidth(train_x, valid_x)
        out["kde"] = {"bandwidth": lam, "valid_scores": scores,
                      "test_log_likelihood": float(_kde.log_likelihood(test, train_x, lam).mean())}
    with open(os.path.join(run_dir, "evaluation.json"), "w") as f:
        json.dump(out, f, indent=1)
    log(f"test ELBO {out['test_elbo']:.3f}  test log p(x) (k={k}) {out['test_log_likelihood']:.3f} nats  "
        f"active units {out['active_units']}/{cfg.latent}"
        + (f"  | pixel-space KDE (bandwidth {out['kde']['bandwidth']}) log p(x) "
           f"{out['kde']['test_log_likelihood']:.3f}" if kde else ""))
    return out
