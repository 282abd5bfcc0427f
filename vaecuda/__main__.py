"""vaecuda's command line.

    python -m vaecuda train --out runs/digits                       # the bundled digits, a few minutes on a CPU
    python -m vaecuda train --data mnist.npz --preset iwae-paper --objective iwae --k 50 --out runs/mnist
    python -m vaecuda train --out runs/digits --resume --epochs 40  # continue a run exactly
    python -m vaecuda evaluate runs/digits --k 5000                 # test ELBO, log p(x), active units, KDE
    python -m vaecuda bench                                         # the benchmark suite (vaecuda.bench)

Errors in the data, the run folder or the checkpoint end with a message and exit status 2; nothing
is overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from . import data as _data


def _train_parser(sub):
    from .train import PRESETS, Config
    d = Config()
    p = sub.add_parser("train", help="train a reference VAE into a run folder",
                       description="Train a reference VAE; writes config.json, metrics.jsonl, checkpoint.pt "
                                   "(each epoch) and PNGs into --out.")
    p.add_argument("--out", required=True, help="the run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--stop-after", type=int, help="stop after this epoch (resume later with --resume)")
    p.add_argument("--data", default=d.data, help="'digits', a binarized MNIST .npz, or a folder of .amat / IDX files")
    p.add_argument("--download", action="store_true",
                   help="fetch the MNIST IDX files into the --data folder first (needs network access)")
    p.add_argument("--binarize", default=d.binarize, choices=_data.BINARIZE)
    p.add_argument("--preset", choices=sorted(PRESETS), help="an architecture: " +
                   "; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    p.add_argument("--arch", choices=["mlp", "conv"])
    p.add_argument("--hidden", type=lambda s: [int(v) for v in s.split(",")], help="MLP widths, e.g. 200,200")
    p.add_argument("--latent", type=int)
    p.add_argument("--activation", choices=["relu", "tanh", "elu", "gelu", "silu"])
    p.add_argument("--channels", type=int, default=d.channels, help="conv channels")
    p.add_argument("--objective", default=d.objective, choices=["elbo", "iwae"])
    p.add_argument("--k", type=int, default=d.k, help="IWAE samples per image")
    p.add_argument("--beta", type=float, default=d.beta)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="KL warm-up length")
    p.add_argument("--free-bits", type=float, default=d.free_bits)
    p.add_argument("--epochs", type=int, default=None,
                   help=f"total epochs (default {d.epochs}; with --resume, the run's own unless given)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=["constant", "cosine", "exponential"])
    p.add_argument("--lr-decay", type=float, default=d.lr_decay, help="per-epoch factor (exponential)")
    p.add_argument("--ops", default=d.ops, choices=["fused", "reference", "eager"], help="who computes the loss")
    p.add_argument("--device", default=d.device)
    p.add_argument("--seed", type=int, default=d.seed, help="in [0, 2^32)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _evaluate_parser(sub):
    p = sub.add_parser("evaluate", help="test ELBO, importance-sampled log p(x), active units, pixel KDE",
                       description="Evaluate a run folder; writes evaluation.json there.")
    p.add_argument("run", help="the run folder")
    p.add_argument("--k", type=int, default=5000, help="importance samples per test image")
    p.add_argument("--limit", type=int, help="only N test images (a fixed random subset, the same for every run)")
    p.add_argument("--no-kde", action="store_true", help="skip the pixel-space kernel density baseline")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")


def _config(args):
    from .train import PRESETS, Config
    fields = {f.name for f in dataclasses.fields(Config)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    arch = dict(PRESETS[args.preset]) if args.preset else {}
    for name in ("arch", "hidden", "latent", "activation"):  # explicit flags win over the preset
        if getattr(args, name) is not None:
            arch[name] = getattr(args, name)
    values.update(arch)
    return Config(**values, **({} if args.epochs is not None else {"epochs": None}))  # None: the run's own


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from .bench.__main__ import main as bench_main
        return bench_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m vaecuda", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _evaluate_parser(sub)
    sub.add_parser("bench", help="the benchmark suite (python -m vaecuda.bench --help)")
    args = p.parse_args(argv)
    from . import train as _train
    try:
        if args.command == "train":
            cfg = _config(args)
            cfg.check()
            if args.download:
                if cfg.data == "digits" or cfg.data.endswith(".npz"):
                    raise _data.DataError("--download fetches MNIST into a folder: give --data a folder path")
                _data.download(cfg.data)
            _train.train(cfg, args.out, resume=args.resume, stop_after=args.stop_after, progress=not args.quiet)
            if not args.no_plots:
                c, model, splits = _train.load_run(args.out, None if cfg.device == "auto" else cfg.device)
                from . import plots
                written = plots.write_all(args.out, model, splits, _train.device_of(c), c.seed)
                print("wrote " + ", ".join(written))
        else:
            _train.evaluate(args.run, k=args.k, limit=args.limit, kde=not args.no_kde, device=args.device,
                            progress=not args.quiet)
    except (_data.DataError, _train.RunError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
