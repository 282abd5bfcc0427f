"""The CUDA kernels' logic without a GPU: csrc/cuda/*.cu compiled by the host compiler against a CPU
emulation of the few CUDA features they use (tests/cuda_emu/cuda_runtime.h: one thread per CUDA
thread, blocks one after another, __syncthreads and warp shuffles by barriers), then checked by
tests/cuda_emu/driver.cpp against plain loops over the same math: every kernel, row widths that take
8 or 16 lanes, a warp or a block per row, widths that are and are not multiples of 4, four layouts, K
samples, the noise's flat-index keying and bit-equal results across layouts.

It proves indexing, reductions and synchronization, not the device's arithmetic, memory model or
speed: benchmarks/gpu_check.sh does that on a GPU. Needs g++ with C++20 and the CUDA toolkit's
headers (cuda_fp16.h, cuda_bf16.h); skipped where they are missing."""

import glob
import os
import re
import shutil
import subprocess

import pytest

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


@pytest.mark.skipif(CXX is None or CUDA_INCLUDE is None,
                    reason="needs g++ and the CUDA toolkit's headers (cuda_fp16.h)")
def test_cuda_kernels_under_cpu_emulation(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    assert _emulated_sources(str(src)) >= 17  # every launch in csrc/cuda was rewritten
    exe = tmp_path / "driver"
    cmd = [CXX, "-std=c++20", "-O1", "-ffp-contract=off", "-fno-math-errno", "-pthread", "-x", "c++",
           f"-I{EMU}", f"-I{src}", f"-I{CUDA_INCLUDE}", os.path.join(EMU, "driver.cpp"), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "all passed" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]
