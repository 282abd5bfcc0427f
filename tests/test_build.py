"""The build plan in setup.py: when CUDA kernels are built, and the messages when they cannot be."""

import importlib.util
import os
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def setup_module(monkeypatch):
    spec = importlib.util.spec_from_file_location("vaecuda_setup", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # setup() runs only under __main__
    monkeypatch.delenv("VAECUDA_CUDA", raising=False)
    return mod


def _torch(cuda):
    return types.SimpleNamespace(__version__="9.9.9", version=types.SimpleNamespace(cuda=cuda))


def test_cpu_only_torch_builds_cpu_kernels(setup_module):
    build, reason = setup_module.cuda_plan(_torch(None), types.SimpleNamespace(CUDA_HOME=None), ["a.cu"])
    assert not build and "CPU-only build" in reason


def test_cuda_torch_with_matching_nvcc_builds_cuda(setup_module, monkeypatch):
    monkeypatch.setattr(setup_module, "nvcc_version", lambda home: (13, 0))
    build, reason = setup_module.cuda_plan(_torch("13.0"), types.SimpleNamespace(CUDA_HOME="/cuda"), ["a.cu"])
    assert build and "nvcc 13.0" in reason


def test_major_version_mismatch_fails_clearly(setup_module, monkeypatch):
    monkeypatch.setattr(setup_module, "nvcc_version", lambda home: (12, 4))
    with pytest.raises(SystemExit, match="nvcc at /cuda is CUDA 12.4 but torch 9.9.9 was built with CUDA 13.0"):
        setup_module.cuda_plan(_torch("13.0"), types.SimpleNamespace(CUDA_HOME="/cuda"), ["a.cu"])


def test_forced_cuda_that_cannot_build_fails_clearly(setup_module, monkeypatch):
    monkeypatch.setenv("VAECUDA_CUDA", "1")
    with pytest.raises(SystemExit, match="VAECUDA_CUDA=1 but the CUDA kernels cannot be built: .*CPU-only build"):
        setup_module.cuda_plan(_torch(None), types.SimpleNamespace(CUDA_HOME=None), ["a.cu"])
    monkeypatch.setenv("VAECUDA_CUDA", "0")
    assert setup_module.cuda_plan(_torch("13.0"), types.SimpleNamespace(CUDA_HOME="/cuda"), ["a.cu"]) == (
        False, "VAECUDA_CUDA=0")
    monkeypatch.setenv("VAECUDA_CUDA", "yes")
    with pytest.raises(SystemExit, match="VAECUDA_CUDA must be auto, 1 or 0"):
        setup_module.cuda_plan(_torch("13.0"), types.SimpleNamespace(CUDA_HOME="/cuda"), ["a.cu"])


def test_gencode_flags(setup_module):
    assert setup_module.gencode_flags("8.0;9.0") == ["-gencode=arch=compute_80,code=sm_80",
                                                     "-gencode=arch=compute_90,code=sm_90"]
    assert setup_module.gencode_flags("9.0+PTX") == ["-gencode=arch=compute_90,code=sm_90",
                                                     "-gencode=arch=compute_90,code=compute_90"]
