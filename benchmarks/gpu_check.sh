#!/usr/bin/env bash
# The CUDA path in one call on a bare GPU machine (torch, nvcc and ninja there, no network):
# build from source, run the CUDA tests and then the whole suite, compute-sanitizer memcheck over every
# kernel, the benchmark suite on the GPU (its table), then a short training run. Each stage writes its
# log to $OUT as it goes and has its own time limit, and a failing stage does not stop the next, so a
# call cut short still brings back what it did. Results land in $OUT (the device tool's folder) or
# benchmarks/results.
#   bash benchmarks/gpu_check.sh                         # every stage, quick benchmark suite
#   STAGES="build tests sanitize" bash benchmarks/gpu_check.sh
#   STAGES="build bench train" SUITE=full bash benchmarks/gpu_check.sh
#   # issue 3's reduced-precision rows (bf16 latents and logits, uint8 pixels) at the large shapes, as a
#   # second call on the same warm machine (the build is already there; ~1-2 minutes):
#   STAGES="build bench" BENCH_ARGS="--shapes large xlarge --dtypes bfloat16 float32 --ops sample sample+kl kl \
#     bernoulli bernoulli-u8 --modes fwd fwd+bwd --train --no-binding" bash benchmarks/gpu_check.sh
#   # (fwd beside fwd+bwd splits each op's time between its forward and backward kernels)
#   # each kernel's device time alone at the large shapes against a copy, where Nsight Compute runs
#   # the sampling and bf16 KL kernels' issue and memory utilization, and the kernels each small step launches
#   # (bench --launches, a run of its own: the profiler may leave CUPTI attached, slowing later
#   # launches) (~2 minutes; not in the default stages, which bring back the 8 files the device tool
#   # returns):
#   STAGES="build kernels" bash benchmarks/gpu_check.sh
#   # everything in one archive where only a few files come back (the logs stay in a scratch folder):
#   ARCHIVE=$OUT/gpu_check.tgz OUT=$(mktemp -d) bash benchmarks/gpu_check.sh
# The build is incremental (ninja), so a second call on the same machine skips it in seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
stages=" ${STAGES:-build tests sanitize bench train} "
export PYTHONUNBUFFERED=1 VAECUDA_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build, for scripts run from benchmarks/
py=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$py" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo "8.0;9.0")}
start=$(date +%s)
failed=""
# ARCHIVE=file.tgz: every file of $out in one archive, rewritten after each stage, for a caller that can
# bring back only a few files (a call cut short keeps the stages before it)
pack() { [ -z "${ARCHIVE:-}" ] || { tar czf "$ARCHIVE.tmp" -C "$out" . && mv -f "$ARCHIVE.tmp" "$ARCHIVE"; }; }
trap pack EXIT
stamp() {
  echo "   [$1: rc $2, $(( $(date +%s) - start ))s since the start]"; [ "$2" = 0 ] || failed="$failed $1"
  pack
}
has() { [[ "$stages" == *" $1 "* ]]; }

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

if has build; then
  echo "== build (from source, CUDA required, archs $TORCH_CUDA_ARCH_LIST)"
  "$py" setup.py build_ext --inplace > "$out/gpu_build.log" 2>&1
  rc=$?; [ $rc = 0 ] || tail -n 60 "$out/gpu_build.log"
  grep "vaecuda build" "$out/gpu_build.log" || true
  stamp build $rc
  [ $rc = 0 ] || exit 1
  # a C++ error message that prints a shape: crashed on a toolchain with a static libstdc++ (setup.py
  # links the one torch loaded); should it crash again, rebuild once with the system compiler
  error_path() {
    ldd vaecuda/_C*.so | grep -E "libstdc|not found" || true
    "$py" -c "
import torch, vaecuda
try:
    torch.ops.vaecuda.gaussian_kl(torch.randn(4, 3), torch.randn(4, 5))
except RuntimeError as e:
    print('C++ error path:', str(e).splitlines()[0][:90])"
  }
  error_path; rc=$?
  if [ $rc != 0 ] && [ -x /usr/bin/g++ ]; then
    echo "   the error path failed (rc $rc): rebuilding with /usr/bin/g++ (the first build kept aside)"
    keep=$(mktemp -d); mv build vaecuda/_C*.so "$keep"/
    if CC=/usr/bin/gcc CXX=/usr/bin/g++ LDSHARED="/usr/bin/g++ -shared" "$py" setup.py build_ext --inplace \
        >> "$out/gpu_build.log" 2>&1; then
      error_path; rc=$?
    else
      tail -n 40 "$out/gpu_build.log"; echo "   the system compiler's build failed: back to the first build"
      rm -rf build vaecuda/_C*.so; mv "$keep"/build .; mv "$keep"/_C*.so vaecuda/
    fi
  fi
  stamp error-path $rc
fi
"$py" -c "import vaecuda, json; b = vaecuda.backend_info()['build']; print(json.dumps(b)); assert b and b['cuda']" \
  || { echo "the CUDA kernels are not built"; exit 1; }

if has tests; then
  echo "== CUDA-only tests first (noise bits, graphs, syncs, autocast), then the whole suite"
  # a kernel that hangs fails its test after 90 s (pytest-timeout, where installed) instead of the stage
  per_test=$("$py" -c "import pytest_timeout" 2>/dev/null && echo "--timeout 90 --timeout-method=thread" || true)
  timeout 150 "$py" -m pytest -q -p no:cacheprovider $per_test tests/test_cuda.py 2>&1 | tee "$out/gpu_cuda_tests.log" | tail -n 12
  stamp cuda-tests $?
  xdist=$("$py" -c "import xdist" 2>/dev/null && echo "-n 8" || true)
  # --durations: which tests bound the stage (its time counts toward issue 3's 8 minutes); the CPU
  # emulation of the kernels (two sanitized builds, ~2 minutes of one core) is left to CI: here the
  # kernels themselves run
  OMP_NUM_THREADS=2 timeout 220 "$py" -m pytest -q -p no:cacheprovider $xdist $per_test -rs --durations=8 \
    --ignore tests/test_cuda_emulated.py 2>&1 \
    | tee "$out/gpu_tests.log" | tail -n 36
  stamp whole-suite $?
fi

if has sanitize; then
  echo "== compute-sanitizer memcheck over every kernel (benchmarks/sanitize_ops.py)"
  if command -v compute-sanitizer >/dev/null; then
    # without torch's caching allocator every tensor is its own allocation, so an overrun is seen; two
    # halves of the dtypes (37 s and 46 s on an H200; all four in one process ran past 150 s there), run
    # side by side (the card and 16 cores have room), each to its own log, appended in order after
    pids=()
    for half in "float32 float16" "float64 bfloat16"; do
      ( PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 \
          "$py" benchmarks/sanitize_ops.py cuda $half > "$out/memcheck_${half// /_}.log" 2>&1 ) &
      pids+=($!)
    done
    i=0
    for half in "float32 float16" "float64 bfloat16"; do
      wait "${pids[$i]}"; rc=$?; i=$((i + 1))
      log="$out/memcheck_${half// /_}.log"
      cat "$log" >> "$out/gpu_cuda_tests.log"; tail -n 6 "$log"; rm -f "$log"
      stamp "memcheck(${half// /+})" $rc
    done
  else
    echo "compute-sanitizer is not on PATH here: skipped"
  fi
fi

if has bench; then
  echo "== benchmark suite on the GPU"
  if [ -n "${BENCH_ARGS:-}" ]; then read -r -a bench_args <<< "$BENCH_ARGS"; else bench_args=(--suite "${SUITE:-quick}"); fi
  timeout 330 "$py" -m vaecuda.bench --device cuda "${bench_args[@]}" --out "$out" 2>&1 \
    | tee "$out/gpu_bench.txt" | tail -n 8
  stamp bench $?
fi

if has kernels; then
  echo "== each kernel alone (device time against a copy), then the sampling and bf16 KL kernels under ncu"
  timeout 150 "$py" benchmarks/kernel_times.py 2>&1 | tee "$out/gpu_kernels.txt" | tail -n 62
  stamp kernels $?
  if command -v ncu >/dev/null; then
    metrics=sm__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed
    metrics=$metrics,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active
    metrics=$metrics,launch__registers_per_thread,smsp__inst_executed.sum
    # kernel:name regex:dtype; the bf16 KL kernels: bound by bytes in flight at the third run
    for spec in "sample fwd:reparam:float32" "sample bwd:reparam:float32" "sample+kl fwd:reparam:float32" \
        "sample+kl bwd:reparam:float32" "kl fwd:kl_:bfloat16" "kl bwd:kl_:bfloat16"; do
      IFS=: read -r k re dt <<< "$spec"
      # the warm-up's 3 launches skipped: the 4th, timed, launch of that kernel at B=65536, D=1024
      echo "-- ncu: $k $dt" | tee -a "$out/gpu_kernels.txt"
      timeout 90 ncu --kernel-name "regex:$re" --launch-skip 3 --launch-count 1 --metrics "$metrics" \
        "$py" benchmarks/kernel_times.py --only "$k" --shapes 65536x1024 --dtypes "$dt" --reps 1 --rounds 1 2>&1 \
        | grep -E "reparam|gaussian|kl_|\.pct_|registers|inst_executed|ERR|rror" | tee -a "$out/gpu_kernels.txt"
    done
  else
    echo "ncu is not on PATH here: device times only"
  fi
  echo "-- kernel launches per step (small shapes, the training step)"
  timeout 150 "$py" -m vaecuda.bench --device cuda --launches --shapes small --train mlp --out "$out" 2>&1 \
    | tee -a "$out/gpu_kernels.txt" | sed -n '/^dtype/,$p'
  stamp launches ${PIPESTATUS[0]}
fi

if has train; then
  echo "== the reference VAE on the GPU: a short digits run, evaluated, and the drop-in example"
  if "$py" -c "import sklearn" 2>/dev/null; then
    # the run folder stays off $OUT: the device tool brings back 8 files at most
    run=$(mktemp -d)/run-digits
    rc=0
    { timeout 120 "$py" -m vaecuda train --out "$run" --epochs 3 --device cuda --quiet --no-plots 2>&1 | tail -n 2
      echo "train rc ${PIPESTATUS[0]}"
      timeout 90 "$py" -m vaecuda evaluate "$run" --k 500 --device cuda --quiet 2>&1 | tail -n 1
      echo "evaluate rc ${PIPESTATUS[0]}"
      timeout 90 "$py" examples/pytorch_vae_example.py --epochs 2 --device cuda 2>&1 | tail -n 2
      echo "example rc ${PIPESTATUS[0]}"; } | tee "$out/gpu_train.log"
    grep -q -E "rc [1-9]" "$out/gpu_train.log" && rc=1
    stamp train $rc
  else
    echo "scikit-learn is not installed here: no digits data set, skipping the training run"
  fi
fi

if has bench; then
  echo "== summary: the benchmark's table"
  sed -n '/^dtype/,$p' "$out/gpu_bench.txt" | head -n 45
fi
echo "== failed stages:${failed:- none}"
echo "== total: $(( $(date +%s) - start )) s (issue 3 asks for build, tests and benchmark within 480 s)"
[ -z "$failed" ]
