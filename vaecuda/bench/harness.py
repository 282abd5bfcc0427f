"""Checking and timing a Case: values first (a benchmark of wrong results is refused), then interleaved
timed rounds of every provider, and the measurements that go with them."""

from __future__ import annotations

import statistics
import time

import torch

from .workloads import FLOORS, OVER_FLOOR, Case


class ProviderMismatch(RuntimeError):
    """Providers disagree on the values of a case: its timings would compare different work."""


def tolerance(dtype: torch.dtype, want: torch.Tensor) -> dict:
    """How close a provider's tensor must be to the first provider's ``want``. For 16-bit dtypes the
    absolute part scales with ``want``'s largest magnitude: eager rounds each intermediate to 8 (bf16)
    or 11 (fp16) significant bits, so where terms cancel (d logvar = g_kl (e^logvar - 1) / 2 + ... near
    logvar = 0) one element of millions can be off by more than 3% of itself and still be within 3%
    of the tensor's scale (an H200 run: eager and torch.compile 0.072 apart on one such element, the
    gradient's largest being several units)."""
    if dtype == torch.float64:
        return dict(rtol=1e-7, atol=1e-7)
    if dtype == torch.float32:
        return dict(rtol=1e-4, atol=1e-3)
    scale = max(1.0, float(want.detach().abs().amax())) if want.numel() else 1.0
    return dict(rtol=3e-2, atol=3e-2 * scale)


def results_of(case: Case, provider: str):
    """Outputs (and, when the case has a backward, gradients) of one provider with the fixed noise."""
    if case.mode == "fwd":
        with torch.no_grad():
            return tuple(o.detach().clone() for o in case.providers[provider](True)), ()
    with torch.enable_grad():  # copies: a CUDA-graphed provider's outputs are overwritten by its next call
        outs = case.providers[provider](True)
        grads = torch.autograd.grad(outs, case.wrt[provider], case.grads_out or None, allow_unused=True)
    return tuple(o.detach().clone() for o in outs), tuple(g.clone() for g in grads if g is not None)


def check_case(case: Case, dtype: torch.dtype):
    """Raise ProviderMismatch unless every provider's values and gradients match the first provider's
    (eager PyTorch, where there is one) within the dtype's tolerance."""
    reference = next(iter(case.providers))
    first_calls = {}
    results = {}
    for name in case.providers:  # the first calls compile, for compiled providers: timed apart
        t = time.perf_counter()
        results[name] = results_of(case, name)
        first_calls[name] = time.perf_counter() - t
    want_outs, want_grads = results[reference]
    for name, (outs, grads) in results.items():
        if name == reference:
            continue
        what = [("output", i, a, b) for i, (a, b) in enumerate(zip(outs, want_outs))]
        what += [("gradient", i, a, b) for i, (a, b) in enumerate(zip(grads, want_grads))]
        if len(outs) != len(want_outs) or len(grads) != len(want_grads):
            raise ProviderMismatch(f"refusing to benchmark {case.key}: {name} returns {len(outs)} outputs and "
                                   f"{len(grads)} gradients, {reference} {len(want_outs)} and {len(want_grads)}")
        for kind, i, a, b in what:
            try:
                want = b.float()
                torch.testing.assert_close(a.float(), want, **tolerance(dtype, want))
            except AssertionError as e:
                raise ProviderMismatch(f"refusing to benchmark {case.key}: {name} and {reference} disagree on "
                                       f"{kind} {i}\n{e}") from None
    return first_calls


def make_step(case: Case, provider: str):
    """The timed unit: one call (forward, and backward when the case has one) as a training loop runs it."""
    if provider in case.steps:
        return case.steps[provider]
    forward, wrt, grads_out = case.providers[provider], case.wrt[provider], case.grads_out
    if case.mode == "fwd":
        def step():
            with torch.no_grad():
                forward(False)
    else:
        def step():
            torch.autograd.grad(forward(False), wrt, grads_out)
    return step


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quantile(xs, q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def round_order(case: Case) -> list[str]:
    """Every provider and extra step, in the order each timed round runs them: the trivial-op floors
    right after vaecuda, so that the two loops whose ratio is reported run back to back."""
    names = [n for n in list(case.providers) + list(case.steps) if n not in FLOORS]
    names = list(dict.fromkeys(names))
    at = names.index("vaecuda") + 1 if "vaecuda" in names else len(names)
    return names[:at] + [f for f in FLOORS if f in case.steps] + names[at:]


def paired_ratio(xs, ys) -> float:
    """The median over rounds of xs[i] / ys[i]: two steps timed in the same rounds compared round by
    round, so that a machine slower in one round than in another slows both sides of that ratio."""
    return statistics.median(x / y for x, y in zip(xs, ys))


def time_case(case: Case, device: torch.device, rounds: int, target_s: float, first_calls=None) -> dict:
    """Per-provider measurements: host-inclusive µs per step (a loop of calls, then one sync, in
    `rounds` interleaved rounds so a noisy machine slows every provider alike), the time of compiled
    providers' first calls (`first_calls`: those of the check) kept apart as compile time, vaecuda's
    step over each trivial-op floor timed beside it (paired_ratio), and on CUDA device µs (events
    around single steps after an L2 flush) and peak memory. No profiler runs here: see
    count_launches."""
    names = round_order(case)
    steps = {name: make_step(case, name) for name in names}
    out = {name: {} for name in names}
    loops = {}
    for name, step in steps.items():
        sync(device)
        t = time.perf_counter()
        step()  # compiles, for compiled providers
        sync(device)
        first = time.perf_counter() - t
        for _ in range(2):
            step()
        loops[name] = loop_length(step, device, target_s)
        if name in case.compiled:  # compiling for the check's fixed noise, then for the timed steps
            out[name]["compile_s"] = round(first + (first_calls or {}).get(name, 0.0), 3)
    samples = {name: [] for name in names}
    for _ in range(rounds):
        for name, step in steps.items():
            samples[name].append(time_loop(step, loops[name], device))
    for name, xs in samples.items():
        out[name].update(median_us=statistics.median(xs), p20_us=quantile(xs, 0.2), p80_us=quantile(xs, 0.8))
        if device.type == "cuda":
            out[name].update(_cuda_extras(steps[name], device))
    for floor, key in OVER_FLOOR.items():
        if "vaecuda" in samples and floor in samples:
            out["vaecuda"][key] = paired_ratio(samples["vaecuda"], samples[floor])
    return out


def time_loop(step, n: int, device: torch.device) -> float:
    """µs per call of n calls of step in a loop, then one sync."""
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - t) / n * 1e6


def loop_length(step, device: torch.device, target_s: float) -> int:
    """How many calls of a warmed-up step make a timed loop of about target_s (from one call timed)."""
    once = max(time_loop(step, 1, device) * 1e-6, 1e-7)
    return max(2, min(10_000, int(target_s / once)))


def floor_us(step, device: torch.device, rounds: int = 5, target_s: float = 0.02) -> float:
    """The median µs of one step over a few loops: the trivial op's time at the start and at the end
    of a run, which shows whether the process itself got slower between them."""
    for _ in range(3):
        step()
    n = loop_length(step, device, target_s)
    return statistics.median(time_loop(step, n, device) for _ in range(rounds))


_FLUSH = {}


def _cuda_extras(step, device, reps: int = 20) -> dict:
    """Device time per step (events around one step, L2 flushed before each) and peak memory above
    what was allocated before the step."""
    if device not in _FLUSH:  # bigger than any L2 (H100: 50 MB, H200: 60 MB)
        _FLUSH[device] = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    flush = _FLUSH[device]
    times = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    sync(device)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return {"device_us": statistics.median(times), "device_p20_us": quantile(times, 0.2),
            "device_p80_us": quantile(times, 0.8), "peak_MB": round(peak, 3)}


def count_launches(case: Case, device: torch.device) -> dict:
    """Kernels launched by one step of each provider, counted by torch.profiler on the GPU. Not part
    of a timed run: the profiler attaches NVIDIA's CUPTI to the process, and Kineto has left it
    attached after profiling unless TEARDOWN_CUPTI=1 (pytorch/pytorch#144455), which would slow the
    launches of every step timed after it."""
    from torch.profiler import ProfilerActivity, profile
    out = {}
    for name in round_order(case):
        step = make_step(case, name)
        for _ in range(3):  # compiles and warms up, outside the profile
            step()
        sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            sync(device)
        out[name] = {"launches": sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)}
    return out


def copy_bandwidth(device: torch.device, nbytes: int = 256 << 20, reps: int = 10) -> float:
    """GB/s of a device-to-device copy (bytes read + bytes written), measured now on this device."""
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(device)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        ts.append(time.perf_counter() - t)
    return 2 * nbytes / statistics.median(ts) / 1e9
