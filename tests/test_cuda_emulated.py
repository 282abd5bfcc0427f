"""The CUDA kernels' logic without a GPU: csrc/cuda/*.cu compiled by the host compiler against a CPU
emulation of the few CUDA features they use (tests/cuda_emu/cuda_runtime.h: one thread per CUDA
thread, blocks one after another, __syncthreads and warp shuffles by barriers), then checked by
tests/cuda_emu/driver.cpp against plain loops over the same math: every kernel, row widths that take
8 or 16 lanes, a warp or a block per row, widths that are and are not multiples of 4, five layouts
(one with a base no vector load may use), K samples, the noise's flat-index keying and bit-equal
results across layouts; all of it three times, with the grids a GPU gets and with grids capped at one
and at two blocks (VAECUDA_MAX_BLOCKS), so that every kernel's grid-stride loop takes its stride (on a
GPU only past 65535 * 32 blocks).

The header's device branches are compiled in (VAECUDA_EMULATE_DEVICE_MATH, the intrinsics emulated by
IEEE host operations and std::fma), so the kernels run the math the GPU runs, and the device's normal
transform is checked against the reference bit for bit. The driver is built with AddressSanitizer and
UBSan, so an out-of-bounds access or a misaligned vector load fails the run, and again with
ThreadSanitizer, so a data race within a block does. It proves indexing, bounds, alignment, reductions,
synchronization and those branches' logic and bits, not the device's own expf, logf, log1pf (the
host's are used), memory model or speed: benchmarks/gpu_check.sh does that on a GPU. Needs g++ with C++20 and
the CUDA toolkit's headers (cuda_fp16.h, cuda_bf16.h); skipped where they are missing."""

import glob
import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch

from vaecuda import reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU = os.path.join(ROOT, "tests", "cuda_emu")


def _cuda_include():
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "include"))
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include"))
    candidates += sorted(glob.glob("/usr/local/cuda*/include"), reverse=True)
    for c in candidates:
        if os.path.isfile(os.path.join(c, "cuda_fp16.h")) and os.path.isfile(os.path.join(c, "driver_types.h")):
            return c
    return None


CUDA_INCLUDE = _cuda_include()
CXX = shutil.which("g++")

# kernel<<<grid, block, shared, stream>>>(args)  ->  emu_launch(kernel, grid, block, shared, stream, args)
_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<(?:[^<>]|<[^<>]*>)*>)?)\s*<<<(.*?)>>>\s*\(", re.S)


def _emulated_sources(dst):
    launches = 0
    for path in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*")):
        text = open(path).read()
        text, n = _LAUNCH.subn(lambda m: f"emu_launch({m.group(1)}, {m.group(2)}, ", text)
        launches += n
        with open(os.path.join(dst, os.path.basename(path)), "w") as f:
            f.write(text.replace('#include "../', '#include "'))
    for name in ("kernel_args.h", "row_view.h", "vae_math.h"):
        shutil.copy(os.path.join(ROOT, "csrc", name), dst)
    return launches


ASAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
TSAN = ["-fsanitize=thread"]
# LeakSanitizer stops under ptrace (some containers), and leaks are not what this checks; a data race
# fails the run at once
SANITIZER_ENV = {"ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1",
                 "TSAN_OPTIONS": "halt_on_error=1"}


def _links(tmp, flags) -> bool:
    """Whether g++ can link and start a program with these sanitizer flags here (their runtime libraries;
    some kernels' address-space layouts stop a sanitizer's runtime at start)."""
    probe = tmp / "probe.cpp"
    probe.write_text("int main() { return 0; }\n")
    if subprocess.run([CXX, *flags, str(probe), "-o", str(tmp / "probe")], capture_output=True).returncode != 0:
        return False
    return _run([str(tmp / "probe")], 60).returncode == 0


def _build(tmp_path_factory, name, opt, flags):
    """tests/cuda_emu/driver.cpp with the kernels. VAECUDA_EMULATE_DEVICE_MATH selects vae_math.h's device
    branches (the intrinsics, the FMA, expf), as nvcc's device pass does; VAECUDA_MAX_BLOCKS a variable,
    so the driver can cap the grids."""
    if CXX is None or CUDA_INCLUDE is None:
        pytest.skip("needs g++ and the CUDA toolkit's headers (cuda_fp16.h)")
    tmp = tmp_path_factory.mktemp(name)
    src = tmp / "src"
    src.mkdir()
    assert _emulated_sources(str(src)) >= 17  # every launch in csrc/cuda was rewritten
    if flags and not _links(tmp, flags):
        return None
    exe = tmp / "driver"
    cmd = [CXX, "-std=c++20", opt, *flags, "-ffp-contract=off", "-fno-math-errno", "-pthread", "-x", "c++",
           "-DVAECUDA_EMULATE_DEVICE_MATH", "-DVAECUDA_MAX_BLOCKS=emu_max_blocks",
           f"-I{EMU}", f"-I{src}", f"-I{CUDA_INCLUDE}", os.path.join(EMU, "driver.cpp"), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    return exe


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The driver, built once for this module with AddressSanitizer and UBSan where g++ has them: a
    kernel that reads or writes past a buffer (compute-sanitizer's memcheck on a GPU) or makes a vector
    load from a misaligned address (a fault on a GPU, silent on x86) stops the run. -O0: the sanitized
    build compiles in less than half of -O1's time."""
    exe = _build(tmp_path_factory, "cuda_emu", "-O0", ASAN)
    if exe is None:
        warnings.warn("a -fsanitize=address,undefined program does not link or start here: the emulated "
                      "kernels run without the out-of-bounds and alignment checks")
        exe = _build(tmp_path_factory, "cuda_emu_plain", "-O1", [])
    return exe


def _run(cmd, timeout):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **SANITIZER_ENV})


def test_cuda_kernels_under_cpu_emulation(driver):
    run = _run([str(driver)], 600)
    assert run.returncode == 0 and "all passed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]


def test_cuda_kernels_race_free_under_thread_sanitizer(tmp_path_factory):
    # The block's shared memory (row sums over a block), the outputs each thread writes, the grid-stride
    # loops: ThreadSanitizer sees a missing __syncthreads (checked on a planted one) or two threads of a
    # block writing one element (blocks run one after another here, so not two blocks). Two widths
    # (--races): its threads run ~10x slower.
    exe = _build(tmp_path_factory, "cuda_emu_tsan", "-O1", TSAN)
    if exe is None:
        pytest.skip("a -fsanitize=thread program does not link or start here (libtsan)")
    run = _run([str(exe), "--races"], 600)
    assert run.returncode == 0 and "all passed" in run.stdout, run.stdout[-2000:] + run.stderr[-4000:]


def _edge_words() -> tuple[torch.Tensor, torch.Tensor]:
    """Word pairs (a, b) where the transform is most delicate, and random ones: every a of the first and
    last 2^16 (the smallest uniforms, the largest radii; u rounding to 1, radius 0), every angle bits
    near each quadrant's start, middle (the reflection) and end, in all four quadrants."""
    g = torch.Generator().manual_seed(3)
    rand = lambda n: torch.randint(0, 2**32, (n,), generator=g, dtype=torch.int64)  # noqa: E731
    ends = torch.cat([torch.arange(2**16), torch.arange(2**32 - 2**16, 2**32)])
    i = torch.cat([torch.arange(0, 64), torch.arange(2**23 - 64, 2**23 + 64), torch.arange(2**24 - 64, 2**24)])
    angles = ((torch.arange(4).view(4, 1, 1) << 30) | (i.view(1, -1, 1) << 6) | torch.tensor([0, 63]).view(1, 1, 2))
    angles = angles.reshape(-1)
    a = torch.cat([ends, rand(angles.numel()), rand(2**18)])
    b = torch.cat([rand(ends.numel()), angles, rand(2**18)])
    return a, b


def test_device_box_muller_equals_reference_bitwise(driver, tmp_path):
    # The device's normal transform (its FMA with an exact product, its correctly rounded intrinsics)
    # gives the bits of vaecuda/reference.py, which the CPU kernels equal (tests/test_philox.py).
    a, b = _edge_words()
    words = torch.stack([a, b], 1).numpy().astype(np.uint32)
    (tmp_path / "in.bin").write_bytes(words.tobytes())
    run = _run([str(driver), "--box-muller", str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], 120)
    assert run.returncode == 0, run.stderr[-2000:]
    got = torch.from_numpy(np.frombuffer((tmp_path / "out.bin").read_bytes(), dtype=np.float32).copy())
    want = torch.stack(ref._box_muller(a, b), 1).reshape(-1)
    assert got.shape == want.shape
    bad = (got.view(torch.int32) != want.view(torch.int32)).nonzero()
    assert bad.numel() == 0, f"{bad.numel()} values differ, first at pair {bad[0].item() // 2}"
