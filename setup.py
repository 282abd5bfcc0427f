"""Builds vaecuda._C: the C++ CPU kernels always, the CUDA kernels when they can be built.

Switches (environment variables):
  VAECUDA_CUDA=auto|1|0   auto (default): build the CUDA kernels when torch has CUDA, nvcc is found
                          and csrc/cuda holds kernels; 1: require them (fail if impossible); 0: never.
  TORCH_CUDA_ARCH_LIST    architectures, e.g. "8.0;9.0" (default: sm_80 and sm_90).
  MAX_JOBS                parallel compile jobs (default: one per core, fewer on little memory).
  CUDA_HOME               the CUDA toolkit (default: torch's guess from nvcc on PATH).

Install with `pip install --no-build-isolation -e .` so the extension compiles against the torch
you run, not a fresh copy in an isolated build environment.
"""

import glob
import os
import re
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0"


def say(msg):
    print(f"[vaecuda build] {msg}", file=sys.stderr, flush=True)


def default_max_jobs():
    cores = os.cpu_count() or 1
    try:  # about 2 GB of memory per nvcc/g++ job on these sources
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return max(1, min(cores, int(mem_gb // 2)))
    except (ValueError, OSError, AttributeError):
        return cores


def nvcc_version(cuda_home):
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else "nvcc"
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def cuda_plan(torch, cpp_extension, cu_sources):
    """Returns (build_cuda, reason)."""
    mode = os.environ.get("VAECUDA_CUDA", "auto").strip().lower()
    if mode not in ("auto", "1", "0"):
        raise SystemExit(f"[vaecuda build] VAECUDA_CUDA must be auto, 1 or 0, got {mode!r}")
    if mode == "0":
        return False, "VAECUDA_CUDA=0"
    problems = []
    if not cu_sources:
        problems.append("csrc/cuda holds no .cu kernels")
    cuda_home = nvcc = None
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build")
    else:
        cuda_home = cpp_extension.CUDA_HOME
        nvcc = nvcc_version(cuda_home) if cuda_home else None
        if nvcc is None:
            problems.append(f"nvcc was not found under CUDA_HOME={cuda_home} (set CUDA_HOME to the toolkit)")
    if not problems:
        torch_major = int(torch.version.cuda.split(".")[0])
        if nvcc[0] != torch_major:
            raise SystemExit(
                f"[vaecuda build] nvcc at {cuda_home} is CUDA {nvcc[0]}.{nvcc[1]} but torch {torch.__version__} "
                f"was built with CUDA {torch.version.cuda}: the major versions must agree. Point CUDA_HOME "
                f"at a CUDA {torch_major}.x toolkit, or build without CUDA: VAECUDA_CUDA=0."
            )
        return True, f"torch has CUDA {torch.version.cuda}, nvcc {nvcc[0]}.{nvcc[1]} at {cuda_home}"
    if mode == "1":
        raise SystemExit("[vaecuda build] VAECUDA_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(problems))
    return False, "; ".join(problems)


def gencode_flags(arch_list):
    flags = []
    for arch in re.split(r"[;\s,]+", arch_list.strip()):
        if not arch:
            continue
        ptx = arch.endswith("+PTX")
        num = arch.replace("+PTX", "").replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def runtime_libstdcxx():
    """The libstdc++ this process runs on once torch is imported (Linux), else None.

    The extension links against it by path. A toolchain whose own libstdc++ is a static archive (the
    H200 image's /opt/gcc, which its Python was built with) would otherwise copy parts of libstdc++
    into _C beside the shared one torch loaded; the two copies' iostream state crashed the first
    error message that printed a number (a shape, in a TORCH_CHECK)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if os.path.basename(path).startswith("libstdc++.so") and os.path.isfile(path):
                    return path
    except OSError:
        pass
    return None


def extensions():
    import torch
    from torch.utils import cpp_extension

    os.environ.setdefault("MAX_JOBS", str(default_max_jobs()))
    cpu_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cu_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    build_cuda, reason = cuda_plan(torch, cpp_extension, cu_sources)

    # -ffp-contract=off: no FMA contraction, so the normal transform rounds exactly as the reference.
    # -fno-math-errno -fno-trapping-math: let sqrt and the branch-free selects vectorize.
    # -fopenmp: at::parallel_for is OpenMP inline code; the runtime resolves to the libgomp torch loads.
    cxx_flags = ["-O3", "-g0", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
    link_flags = ["-fopenmp"]
    libstdcxx = runtime_libstdcxx()
    if libstdcxx:
        link_flags.append(libstdcxx)
        say(f"linking against {libstdcxx}, the libstdc++ torch runs on")
    macros = [("VAECUDA_TORCH_VERSION", f'"{torch.__version__}"')]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if build_cuda:
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCHS
        # torch reads TORCH_CUDA_ARCH_LIST too; pin it so its flags and ours agree
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        macros += [("VAECUDA_WITH_CUDA", None), ("VAECUDA_CUDA_VERSION", f'"{torch.version.cuda}"'),
                   ("VAECUDA_CUDA_ARCHS", f'"{archs}"')]
        # pip's CUDA wheels carry headers (cuBLAS, cuSPARSE...) that a minimal toolkit may lack
        for site in {os.path.dirname(os.path.dirname(torch.__file__))}:
            include_dirs += sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))
        say(f"building CPU + CUDA kernels for {archs} ({reason}); MAX_JOBS={os.environ['MAX_JOBS']}")
        ext = cpp_extension.CUDAExtension(
            "vaecuda._C",
            cpu_sources + cu_sources,
            include_dirs=include_dirs,
            define_macros=macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"] + gencode_flags(archs)},
            extra_link_args=link_flags,
        )
    else:
        say(f"building CPU kernels only: {reason}; MAX_JOBS={os.environ['MAX_JOBS']}")
        ext = cpp_extension.CppExtension(
            "vaecuda._C", cpu_sources, include_dirs=include_dirs, define_macros=macros,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags,
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension}


def main():
    try:
        ext_modules, cmdclass = extensions()
    except ImportError:
        raise SystemExit(
            "[vaecuda build] torch must be installed before vaecuda is built: `pip install torch`, then "
            "`pip install --no-build-isolation -e .`"
        )
    setup(
        packages=find_packages(include=["vaecuda", "vaecuda.*"]),
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )


if __name__ == "__main__":
    main()
