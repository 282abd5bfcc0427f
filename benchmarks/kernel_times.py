"""Device time of each kernel alone, forward and backward apart, at the large shapes, against a copy
timed in the same run: where the fwd+bwd steps of `python -m vaecuda.bench` fall short of issue 3's
85% of copy, this says which direction does. Sampling, KL and the Bernoulli term (its logits [B, D]).

    python3 benchmarks/kernel_times.py                # cuda, float32 and bfloat16, large and xlarge
    python3 benchmarks/kernel_times.py --device cpu --shapes 1024x128 --reps 5   # a smoke run
    ncu --kernel-name regex:reparam --launch-skip 3 --launch-count 1 \
        python3 benchmarks/kernel_times.py --only "sample fwd" --shapes 65536x1024 --dtypes float32 \
        --reps 1 --rounds 1                           # one kernel under Nsight Compute (warm-up skipped)

Each row calls one op of `torch.ops.vaecuda` (what autograd calls, minus autograd) `--reps` times
between two CUDA events after a warm-up, so the time is the kernel's (the host's launches overlap it).
Bytes are the minimum each kernel must move: every input read once, every output written once."""

import argparse
import time

import torch

import vaecuda  # noqa: F401  (registers torch.ops.vaecuda)

ops = torch.ops.vaecuda


def cases(B, D, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)

    def make(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype)

    mu, lv, gz = make(B, D), make(B, D, scale=0.5), make(B, D)
    x = (torch.rand(B, D, generator=g) < 0.3).to(device, dtype)  # Bernoulli targets (mu as the logits)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    grows = torch.randn(B, generator=g).to(device, acc)
    key = vaecuda.rng_state(1234, device=device)
    e, r = torch.finfo(dtype).bits // 8, torch.finfo(acc).bits // 8
    n = B * D
    # name, call, minimum bytes
    return [
        ("sample fwd", lambda: ops.reparameterize(mu, lv, key, None), 3 * e * n),
        # one sample, no KL gradient: autograd passes dz through as d mu and asks for d logvar only
        ("sample bwd", lambda: ops.reparameterize_backward(gz, None, mu, lv, key, None, [False, True]),
         3 * e * n),
        ("sample+kl fwd", lambda: ops.reparameterize_with_kl(mu, lv, key, None), 3 * e * n + r * B),
        ("sample+kl bwd", lambda: ops.reparameterize_backward(gz, grows, mu, lv, key, None, [True, True]),
         5 * e * n + r * B),
        ("kl fwd", lambda: ops.gaussian_kl(mu, lv, None, None, False), 2 * e * n + r * B),
        ("kl bwd", lambda: ops.gaussian_kl_backward(grows, mu, lv, None, None, False, [True, True, False, False]),
         4 * e * n + r * B),
        # the Bernoulli term on a [B, D] of logits with float targets in the same dtype (as the benchmark's
        # `bernoulli` rows): the forward alone (no grad mode), the forward that also writes d/dlogits (what
        # float32 logits that require grad take), and the backward op (16-bit logits, or create_graph)
        ("bern fwd", lambda: ops.bernoulli_log_prob(mu, x, 1, False), 2 * e * n + r * B),
        ("bern fwd+grad", lambda: ops._bernoulli_log_prob_and_grad(mu, x, 1, False), 3 * e * n + r * B),
        ("bern bwd", lambda: ops.bernoulli_log_prob_backward(grows, mu, x, 1, False, [True, False]),
         3 * e * n + r * B),
        ("copy", lambda: mu.clone(), 2 * e * n),
    ]


def timed(fn, reps, device):
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e3 / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) * 1e6 / reps


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--shapes", nargs="+", default=["4096x1024", "65536x1024", "4096x12288"],
                   help="BxD (4096x12288: the Bernoulli term's large shape, a block per row)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3, help="each row's best of this many timed loops")
    p.add_argument("--only", help="just this kernel (and no copy): for a profiler")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        print(f"{torch.cuda.get_device_name(device)} | torch {torch.__version__}")
    print(f"{'dtype':9s} {'shape':11s} {'kernel':14s} {'µs':>9s} {'GB/s':>8s} {'%copy':>6s}")
    for dtype in (getattr(torch, d) for d in args.dtypes):
        for shape in args.shapes:
            B, D = (int(v) for v in shape.split("x"))
            todo = [c for c in cases(B, D, device, dtype) if args.only in (None, c[0])]
            if not todo:
                raise SystemExit(f"--only {args.only!r}: no such kernel")
            rows = [(name, min(timed(fn, args.reps, device) for _ in range(args.rounds)), nbytes)
                    for name, fn, nbytes in todo]
            copy_rate = next((n / us for name, us, n in rows if name == "copy"), float("nan"))  # bytes per µs
            for name, us, nbytes in rows:
                rate = nbytes / us
                print(f"{str(dtype).replace('torch.', ''):9s} {shape:11s} {name:14s} {us:9.1f} "
                      f"{rate / 1e3:8.1f} {100 * rate / copy_rate:5.0f}%")
            del rows
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
