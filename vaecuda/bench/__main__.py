"""vaecuda's benchmark suite: each fused op, the loss head and a VAE training step against the same
math in eager PyTorch and torch.compile, in one run on one machine.

    python -m vaecuda.bench                      # quick suite on the default device (CUDA if present)
    python -m vaecuda.bench --suite full         # every shape, fp32 and bf16, IWAE, size sweep, conv VAE
    python -m vaecuda.bench --ops kl bernoulli --shapes medium --modes fwd+bwd --out results/

Before timing, every provider's outputs and gradients are checked against eager PyTorch's (the same
noise where noise is involved); a mismatch refuses the case and the run exits non-zero.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

import torch

import vaecuda

from .._progress import progress
from . import harness, report, workloads

SUITES = {
    # quick: what a training step feels (fwd+bwd); compiling the baselines is most of its 2 minutes
    "quick": dict(shapes=["small", "medium"], ops=list(workloads.OPS), modes=["fwd+bwd"],
                  train=["mlp"], dtypes=["float32"], rounds=7, target_ms=25.0),
    "full": dict(shapes=list(workloads.SHAPES) + list(workloads.SWEEP), ops=list(workloads.OPS + workloads.EXTRA_OPS),
                 modes=list(workloads.MODES), train=list(workloads.MODELS), dtypes=["float32", "bfloat16"],
                 rounds=7, target_ms=40.0),
}
QUICK_CUDA_SHAPES = ["small", "medium", "large", "xlarge"]  # a GPU runs the large cases in seconds; xlarge (256 MB a tensor) is past its L2


def git_revision() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m vaecuda.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="quick", help="defaults for everything below")
    p.add_argument("--device", default=None, help="cpu or cuda[:n] (default: cuda if available)")
    p.add_argument("--shapes", nargs="+", choices=list(workloads.ALL_SHAPES), metavar="SHAPE",
                   help=f"named shapes: {', '.join(workloads.ALL_SHAPES)}")
    p.add_argument("--ops", nargs="*", choices=list(workloads.OPS + workloads.EXTRA_OPS),
                   help="ops and the loss head (give none, '--ops', for training steps only)")
    p.add_argument("--modes", nargs="+", choices=list(workloads.MODES))
    p.add_argument("--train", nargs="*", choices=list(workloads.MODELS), help="training steps of these VAEs")
    p.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--no-binding", action="store_true", help="skip the binding-path rows")
    p.add_argument("--rounds", type=int, help="interleaved timing rounds per case")
    p.add_argument("--target-ms", type=float, help="time per timed loop of one provider")
    p.add_argument("--out", default="bench_results", help="folder for the JSON, CSV and PNG (default: %(default)s)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--launches", action="store_true",
                   help="count each provider's kernel launches per step (CUDA, torch.profiler) instead of "
                        "timing: the profiler can leave NVIDIA's CUPTI attached to the process, which slows "
                        "later launches, so launches and times come from separate runs")
    args = p.parse_args(argv)
    suite = SUITES[args.suite]
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    if args.launches and args.device.type != "cuda" and not args.list:
        p.error("--launches counts CUDA kernels: it needs --device cuda")
    if args.shapes is None:
        args.shapes = QUICK_CUDA_SHAPES if args.suite == "quick" and args.device.type == "cuda" else suite["shapes"]
    for name in ("ops", "modes", "train", "dtypes", "rounds", "target_ms"):
        if getattr(args, name) is None:
            setattr(args, name, suite[name])
    return args


def plan(args) -> list[tuple]:
    """The cases to build, in order: (kind, name, shape, mode, dtype)."""
    todo = []
    for dtype in args.dtypes:
        if not args.no_binding and dtype == args.dtypes[0]:
            todo.append(("binding", "binding path", "small", "fwd+bwd", dtype))
            todo.append(("binding", "binding path (pixels)", "small", "fwd+bwd", dtype))
        for shape in args.shapes:
            for op in args.ops:
                if workloads.applicable(op, workloads.ALL_SHAPES[shape]):
                    todo += [("op", op, shape, mode, dtype) for mode in args.modes]
        todo += [("train", m, "B=128", "step", dtype) for m in args.train]
    return todo


def build(kind, name, shape, mode, dtype, device):
    dt = getattr(torch, dtype)
    if kind == "binding":
        return workloads.binding_case(device, dt, pixels=name.endswith("(pixels)"))
    if kind == "train":
        return workloads.train_case(name, device, dt)
    return workloads.op_case(name, shape, mode, device, dt, cuda_extras=device.type == "cuda")


def main(argv=None) -> int:
    args = parse(argv)
    device = args.device
    if device.type == "cuda":
        if device.index is None:
            device = args.device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    todo = plan(args)
    if args.list:
        print("\n".join(f"{dt:<9} {shape:<13} {name:<14} {mode}" for _, name, shape, mode, dt in todo))
        return 0
    info = vaecuda.backend_info()
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": str(device), "machine": machine_name(device), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "vaecuda": vaecuda.__version__, "git": git_revision(), "suite": args.suite,
            "backend": info["devices"][device.type]["backend"], "python": platform.python_version()}
    if meta["backend"] != "compiled":
        print(f"warning: vaecuda is running its reference ops on {device.type} "
              f"({info['devices'][device.type]['reason']}): these are not the fused kernels' numbers")
    meta["copy_GBps"] = round(harness.copy_bandwidth(device), 2)
    # the trivial op at the start and at the end: a process that got slower over the run (e.g. a
    # profiler's CUPTI left attached) shows as a difference between the two
    floor = workloads.trivial_step((workloads.SHAPES["small"]["B"], workloads.SHAPES["small"]["D"]), device,
                                   torch.float32) if vaecuda._backend._C is not None and not args.launches else None
    if floor is not None:
        meta["trivial_us_start"] = round(harness.floor_us(floor, device), 2)
    print(f"vaecuda {meta['vaecuda']} ({meta['backend']}) | torch {meta['torch']} | {meta['machine']} | "
          f"{device} | {meta['threads']} threads | copy {meta['copy_GBps']} GB/s | {len(todo)} cases"
          + (" | kernel launches per step, no timing" if args.launches else ""))

    rows, refused = [], []
    start = time.perf_counter()
    bar = progress(todo, "bench")
    for kind, name, shape, mode, dtype in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{dtype} {shape} {name} {mode}")
        # each case compiles its baselines afresh: dynamo's per-function cache would otherwise fill up over
        # the shapes and modes of one suite and leave the later cases' "compile" rows running eager
        torch.compiler.reset()
        case = build(kind, name, shape, mode, dtype, device)
        try:
            first_calls = harness.check_case(case, getattr(torch, dtype))
        except harness.ProviderMismatch as e:
            refused.append(str(e))
            print(f"\n{e}", file=sys.stderr)
            continue
        if args.launches:
            measured = harness.count_launches(case, device)
        else:
            measured = harness.time_case(case, device, args.rounds, args.target_ms / 1e3, first_calls)
        rows += report.rows_of(case, measured, meta["copy_GBps"], dtype)
        del case
    meta["seconds"] = round(time.perf_counter() - start, 1)
    if floor is not None:
        meta["trivial_us_end"] = round(harness.floor_us(floor, device), 2)

    print()
    print(report.tables(rows))
    if floor is not None:
        print(f"\nthe trivial op's fwd+bwd [B, D], timed alone at the start and at the end of the run: "
              f"{meta['trivial_us_start']:.1f} and {meta['trivial_us_end']:.1f} µs")
    stem = f"bench_{device.type}_{args.suite}" + ("_launches" if args.launches else "")
    written = report.write(args.out, stem, meta, rows)
    print(f"\n{len(rows)} rows in {meta['seconds']} s; wrote {', '.join(written)}")
    if refused:
        print(f"refused {len(refused)} case(s): providers disagree on the values (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
