"""Forward+backward time of each vaecuda op against the same math in eager PyTorch and torch.compile.

    python benchmarks/bench_ops.py            # quick: two shapes, CPU (about a minute on 2 cores)
    python benchmarks/bench_ops.py --shapes small medium large --device cuda

Each step is one forward and one backward with given upstream gradients, host time included (a loop
of calls, then one sync): what a training loop feels. Providers are interleaved round by round so a
noisy machine slows them alike. Before timing, every provider's values are checked against vaecuda's
(same noise where noise is involved); a mismatch stops the run.

The "binding path" rows time the cheapest op through each way of binding an op: plain `x * 2`,
vaecuda's `_scale` (dispatcher + C++ autograd, as every vaecuda op) and the same op as a Python
`torch.library.custom_op` with `register_autograd`.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import vaecuda

SHAPES = {  # name: (B, D, P)
    "small": (128, 32, 784),
    "medium": (1024, 128, 3072),
    "large": (4096, 1024, 12288),
}


# ---------------------------------------------------------------------------------------------------
# the same math, as PyTorch users write it
def eager_sample(mu, lv, eps):
    return mu + torch.exp(0.5 * lv) * eps


def eager_kl(mu, lv):
    return 0.5 * (torch.exp(lv) + mu * mu - 1.0 - lv).sum(-1)


def eager_bernoulli(logits, x):
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def _scale_py_op():
    """alpha * x as a Python custom op with Python autograd: the other binding path."""
    @torch.library.custom_op("vaecuda_bench::scale_py", mutates_args=())
    def scale_py(x: torch.Tensor, alpha: float) -> torch.Tensor:
        return x * alpha

    @scale_py.register_fake
    def _(x, alpha):
        return torch.empty_like(x)

    def backward(ctx, g):
        return g * ctx.alpha, None

    def setup_context(ctx, inputs, output):
        ctx.alpha = inputs[1]

    scale_py.register_autograd(backward, setup_context=setup_context)
    return scale_py


# ---------------------------------------------------------------------------------------------------
def cases(shape_name, device, dtype):
    """(op, provider) -> (step function, bytes moved by one fwd+bwd at the minimum)."""
    B, D, P = SHAPES[shape_name]
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device, dtype).requires_grad_()  # noqa: E731
    mu, lv, a = mk(B, D), mk(B, D), mk(B, D)
    logits = mk(B, P)
    x = (torch.rand(B, P, generator=g) < 0.5).to(device, dtype)
    g_rows = torch.randn(B, generator=g).to(device, torch.float32 if dtype != torch.float64 else dtype)
    g_lat = torch.randn(B, D, generator=g).to(device, dtype)
    seed = 1234
    eps = vaecuda.reference.normals(vaecuda.rng_state(seed, device=device), 0, B * D).reshape(B, D).to(dtype)
    esize = torch.finfo(dtype).bits // 8
    compiled = {name: torch.compile(fn) for name, fn in
                (("sample", eager_sample), ("kl", eager_kl), ("bernoulli", eager_bernoulli))}
    scale_py = _scale_py_op()
    scale_c = torch.ops.vaecuda._scale.default

    def step(fn, grad):
        def run():
            out = fn()
            out.backward(grad)
        return run

    def values(fn):
        return lambda: fn().detach()

    # minimum bytes per fwd+bwd: read inputs (fwd), read inputs again + write grads (bwd)
    lat_bytes = B * D * esize
    table = {
        ("binding path", "x * 2"): (lambda: a * 2.0, g_lat, 0),
        ("binding path", "vaecuda _scale"): (lambda: scale_c(a, 2.0), g_lat, 0),
        ("binding path", "custom_op _scale"): (lambda: scale_py(a, 2.0), g_lat, 0),
        ("sample", "eager"): (lambda: eager_sample(mu, lv, torch.randn_like(mu)), g_lat, 7 * lat_bytes),
        ("sample", "compile"): (lambda: compiled["sample"](mu, lv, torch.randn_like(mu)), g_lat, 7 * lat_bytes),
        ("sample", "vaecuda"): (lambda: vaecuda.reparameterize(mu, lv), g_lat, 7 * lat_bytes),
        ("kl", "eager"): (lambda: eager_kl(mu, lv), g_rows, 6 * lat_bytes),
        ("kl", "compile"): (lambda: compiled["kl"](mu, lv), g_rows, 6 * lat_bytes),
        ("kl", "vaecuda"): (lambda: vaecuda.gaussian_kl(mu, lv), g_rows, 6 * lat_bytes),
        ("bernoulli", "eager"): (lambda: eager_bernoulli(logits, x), g_rows, 5 * B * P * esize),
        ("bernoulli", "compile"): (lambda: compiled["bernoulli"](logits, x), g_rows, 5 * B * P * esize),
        ("bernoulli", "vaecuda"): (lambda: vaecuda.bernoulli_log_prob(logits, x), g_rows, 5 * B * P * esize),
    }
    checks = {  # provider values that must agree with vaecuda's before anything is timed
        "sample": (values(lambda: vaecuda.reparameterize(mu, lv, seed=seed)), values(lambda: eager_sample(mu, lv, eps)),
                   values(lambda: compiled["sample"](mu, lv, eps))),
        "kl": (values(lambda: vaecuda.gaussian_kl(mu, lv)), values(lambda: eager_kl(mu, lv)),
               values(lambda: compiled["kl"](mu, lv))),
        "bernoulli": (values(lambda: vaecuda.bernoulli_log_prob(logits, x)), values(lambda: eager_bernoulli(logits, x)),
                      values(lambda: compiled["bernoulli"](logits, x))),
    }
    return {k: (step(fn, grad), nbytes) for k, (fn, grad, nbytes) in table.items()}, checks


def check_values(checks, dtype):
    tol = dict(rtol=1e-4, atol=1e-3) if dtype in (torch.float32, torch.float64) else dict(rtol=2e-2, atol=2e-1)
    for op, (ours, *others) in checks.items():
        expected = ours()
        for other in others:
            got = other()
            try:
                torch.testing.assert_close(got.to(expected.dtype), expected, **tol)
            except AssertionError as e:
                raise SystemExit(f"refusing to benchmark {op}: providers disagree on the values\n{e}")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_all(steps, device, rounds, target_s):
    """Per-call µs samples for every step: `rounds` interleaved rounds of a loop sized to ~target_s."""
    loops = {}
    for key, (fn, _) in steps.items():  # warm-up (and compile), then size each loop
        for _ in range(3):
            fn()
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        loops[key] = max(3, int(target_s / max(time.perf_counter() - t, 1e-6)))
    samples = {key: [] for key in steps}
    for _ in range(rounds):
        for key, (fn, _) in steps.items():
            n = loops[key]
            sync(device)
            t = time.perf_counter()
            for _ in range(n):
                fn()
            sync(device)
            samples[key].append((time.perf_counter() - t) / n * 1e6)
    return samples


def copy_bandwidth(device, nbytes=256 << 20):
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(device)
    ts = []
    for _ in range(10):
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        ts.append(time.perf_counter() - t)
    return 2 * nbytes / statistics.median(ts) / 1e9


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def git_revision():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["small", "medium"], choices=sorted(SHAPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--target-ms", type=float, default=40.0, help="time per timed loop")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": str(device), "machine": machine, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "vaecuda": vaecuda.__version__,
            "git": git_revision(), "dtype": args.dtype, "backend": vaecuda.backend_info()["devices"][device.type]}
    bw = copy_bandwidth(device)
    meta["copy_GBps"] = round(bw, 1)
    print(f"vaecuda {vaecuda.__version__} | torch {torch.__version__} | {machine} | {device} "
          f"{torch.get_num_threads()} threads | {args.dtype} | copy {bw:.1f} GB/s")

    rows = []
    for shape in args.shapes:
        steps, checks = cases(shape, device, dtype)
        check_values(checks, dtype)
        samples = time_all(steps, device, args.rounds, args.target_ms / 1e3)
        for (op, provider), xs in samples.items():
            med = statistics.median(xs)
            nbytes = steps[(op, provider)][1]
            rows.append({"shape": shape, "B,D,P": "x".join(map(str, SHAPES[shape])), "op": op, "provider": provider,
                         "median_us": round(med, 2), "p20_us": round(quantile(xs, 0.2), 2),
                         "p80_us": round(quantile(xs, 0.8), 2),
                         "GBps": round(nbytes / med / 1e3, 2) if nbytes else None,
                         "copy_fraction": round(nbytes / med / 1e3 / bw, 3) if nbytes else None})

    # ratios: eager / vaecuda and compile / vaecuda for each op; binding paths against x * 2
    by_key = {(r["shape"], r["op"], r["provider"]): r for r in rows}
    for r in rows:
        mine = by_key.get((r["shape"], r["op"], "vaecuda"))
        if mine and r["provider"] != "vaecuda":
            r["vaecuda_speedup"] = round(r["median_us"] / mine["median_us"], 2)
        if r["op"] in ("sample", "kl", "bernoulli") and r["provider"] == "vaecuda":
            floor = by_key[(r["shape"], "binding path", "vaecuda _scale")]["median_us"]
            r["over_trivial_op"] = round(r["median_us"] / floor, 2)

    print(f"\n{'shape':<8}{'op':<14}{'provider':<18}{'median µs':>11}{'p20':>10}{'p80':>10}{'GB/s':>8}"
          f"{'×vaecuda':>10}{'/_scale':>9}")
    for r in rows:
        print(f"{r['shape']:<8}{r['op']:<14}{r['provider']:<18}{r['median_us']:>11.1f}{r['p20_us']:>10.1f}"
              f"{r['p80_us']:>10.1f}{(r['GBps'] or 0):>8.2f}{r.get('vaecuda_speedup', ''):>10}"
              f"{r.get('over_trivial_op', ''):>9}")
    print("×vaecuda: that provider's time over vaecuda's (above 1: vaecuda is faster). "
          "/_scale: vaecuda's time over the trivial op on its binding path.")

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"ops_{device.type}_{args.dtype}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(stem + ".csv", "w", newline="") as f:
        fields = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    print(f"\nwrote {stem}.json and .csv")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
