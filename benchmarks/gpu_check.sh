#!/usr/bin/env bash
# The CUDA path in one call on a bare GPU machine (torch, nvcc and ninja there, no network):
# build from source, run the CUDA tests and then the whole suite, run the benchmark suite on the GPU
# (its table), then a short training run. Every stage writes its log to $OUT as it goes, so a call
# cut off by a time limit still brings back what it did. Results land in $OUT (the device tool's folder) or
# benchmarks/results.
#   bash benchmarks/gpu_check.sh            # quick suite
#   SUITE=full bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 VAECUDA_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
py=${PYTHON:-python3}

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== build (from source, CUDA required)"
start=$(date +%s)
"$py" setup.py build_ext --inplace > "$out/gpu_build.log" 2>&1 || { tail -n 40 "$out/gpu_build.log"; exit 1; }
grep "vaecuda build" "$out/gpu_build.log" || true
echo "built in $(( $(date +%s) - start )) s"
"$py" -c "import vaecuda, json; print(json.dumps(vaecuda.backend_info()['build']))"

stamp() { echo "   [$(( $(date +%s) - start ))s since the build started]"; }
echo "== CUDA-only tests first (noise bits, graphs, syncs, autocast), then the whole suite"
"$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/gpu_cuda_tests.log" | tail -n 8
stamp
xdist=$("$py" -c "import xdist" 2>/dev/null && echo "-n 8" || true)
"$py" -m pytest -q -p no:cacheprovider $xdist 2>&1 | tee "$out/gpu_tests.log" | tail -n 15
stamp

echo "== benchmark suite on the GPU"
"$py" -m vaecuda.bench --device cuda --suite "${SUITE:-quick}" --out "$out" 2>&1 \
  | tee "$out/gpu_bench.txt" | tail -n 40
stamp

echo "== the reference VAE on the GPU: a short digits run, evaluated, and the drop-in example"
if "$py" -c "import sklearn" 2>/dev/null; then
  # the run folder stays off $OUT: the device tool brings back 8 files at most, and these 8 matter
  # (3 logs, the bench's text, JSON, CSV and PNG, and this log)
  run=$(mktemp -d)/run-digits
  { "$py" -m vaecuda train --out "$run" --epochs 3 --device cuda --quiet --no-plots 2>&1 | tail -n 2
    "$py" -m vaecuda evaluate "$run" --k 500 --device cuda --quiet 2>&1 | tail -n 1
    "$py" examples/pytorch_vae_example.py --epochs 2 --device cuda 2>&1 | tail -n 2; } | tee "$out/gpu_train.log"
else
  echo "scikit-learn is not installed here: no digits data set, skipping the training run"
fi
stamp

echo "== summary: the benchmark's table"
sed -n '/^dtype/,$p' "$out/gpu_bench.txt" | head -n 45
