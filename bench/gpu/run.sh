#!/usr/bin/env bash
# The H200 harness (issue 3): build (unless a carried build is given), run the CUDA correctness
# sweep against the float64 reference, compute-sanitizer memcheck + racecheck on small cases,
# then the benchmark against PyTorch SDPA (FA2, cuDNN) in the same process.
#
#   bench/gpu/run.sh [--carry DIR] [--quick] [--skip-tests] [--skip-sanitizers] [--only GROUP]
#
# --carry DIR: a prebuilt folder with bin/test_attention_cuda, lib/libsqa.so and the shared
# libraries they need (made by bench/gpu/pack.sh on the build machine), or a .tgz of it. Without it the script
# configures and builds build-gpu/ here. Logs, bench.json and bench.md go to $OUT (default
# bench/results/run-<date>).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
carry="" quick="" skip_tests="" skip_san="" only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --carry) carry=$2; shift ;;
    --quick) quick=--quick ;;
    --skip-tests) skip_tests=1 ;;
    --skip-sanitizers) skip_san=1 ;;
    --only) only=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
out=${OUT:-bench/results/run-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$out"

if [ -n "$carry" ]; then
  # A packed folder (pack.sh) or its gzipped tar (smaller to send: the carry limit is 64 MiB).
  if [ -f "$carry" ]; then
    rm -f /tmp/sqa-carry/BUILD_COMMIT  # an older pack may not have one
    mkdir -p /tmp/sqa-carry && tar -xzf "$carry" -C /tmp/sqa-carry && carry=/tmp/sqa-carry
  fi
  case $carry in /*) ;; *) carry=$root/$carry ;; esac
  bin=$carry/bin/test_attention_cuda
  # The carried build's commit (pack.sh), not the script tree's.
  if [ -z "${SQA_COMMIT:-}" ] && [ -f "$carry/BUILD_COMMIT" ]; then
    SQA_COMMIT=$(cut -d' ' -f1 "$carry/BUILD_COMMIT")
    export SQA_COMMIT
  fi
  lib=$carry/lib/libsqa.so
  export LD_LIBRARY_PATH=$carry/lib:${LD_LIBRARY_PATH:-}
  # libsqa.so links cuDNN 9 (the cuDNN backend); without a system copy, use PyTorch's wheel.
  if ldd "$lib" | grep -q "libcudnn.*not found"; then
    cudnn_lib=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")')
    export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$cudnn_lib
  fi
else
  cmake -S . -B build-gpu -G Ninja -DSQA_CUDA=ON -DCMAKE_BUILD_TYPE=Release >"$out/build.log" 2>&1 &&
    ninja -C build-gpu test_attention_cuda sqa_shared >>"$out/build.log" 2>&1 ||
    { echo "build failed"; tail -30 "$out/build.log"; exit 1; }
  bin=build-gpu/tests/test_attention_cuda
  lib=build-gpu/src/capi/libsqa.so
fi

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv
  echo "commit ${SQA_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}"
  # Which MUFU/MMA instructions each forward kernel uses (packed ex2 shows as MUFU.EX2.*x2).
  if command -v cuobjdump >/dev/null; then
    echo "SASS instruction counts per forward kernel (bf16):"
    cuobjdump -sass "$lib" 2>/dev/null | awk '
      /Function :/ { name = $3 }
      /MUFU|HMMA|HGMMA/ && name ~ /flash_fwd_kernel.*bfloat16/ {
        match($0, /(MUFU|HMMA|HGMMA)[.A-Z0-9]*/); key = name " " substr($0, RSTART, RLENGTH); n[key]++ }
      END { for (k in n) print n[k], k }' | sort -k2 | head -40
  fi
} >"$out/env.txt" 2>&1
head -4 "$out/env.txt"

status=0
if [ -z "$skip_tests" ]; then
  echo "== correctness sweep (GPU vs float64 reference)"
  # Own kernels only here (auto would route d >= 64 to cuDNN); cuDNN has its own tests below.
  # TEST_FILTER (a gtest filter) narrows the sweep, e.g. to the tests of a change.
  SQA_CUDA_BACKEND=own timeout ${TEST_TIMEOUT:-300} "$bin" --gtest_brief=1 \
    ${TEST_FILTER:+--gtest_filter="$TEST_FILTER"} >"$out/tests.log" 2>&1 || status=1
  tail -5 "$out/tests.log"
fi
if [ -z "$skip_san" ]; then
  echo "== compute-sanitizer memcheck + racecheck (small cases)"
  filter='CudaForward.SanitizerSmoke:CudaBackward.SanitizerSmoke'
  {
    SQA_TEST_SCALE=small timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 "$bin" \
      --gtest_filter="$filter" --gtest_brief=1
    echo "memcheck exit $?"
    SQA_TEST_SCALE=small timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 "$bin" \
      --gtest_filter="$filter" --gtest_brief=1
    echo "racecheck exit $?"
  } >"$out/sanitizers.log" 2>&1
  grep -E "exit|ERROR SUMMARY|RACECHECK SUMMARY" "$out/sanitizers.log"
  grep -q "memcheck exit 0" "$out/sanitizers.log" && grep -q "racecheck exit 0" "$out/sanitizers.log" ||
    status=1
fi
echo "== benchmark vs SDPA"
PYTHONUNBUFFERED=1 timeout ${BENCH_TIMEOUT:-400} python3 bench/gpu/bench_attention.py --lib "$lib" --out "$out" $quick \
  ${only:+--only "$only"} >"$out/bench.log" 2>&1 || status=1
# The cuDNN backend: its tests and the d = 64 / 128 group with own / cuDNN / default / SDPA.
if [ -n "$carry" ] && [ -f "$carry/bin/test_cudnn_backend" ] && [ -z "$only" ]; then
  OUT=$out/cudnn bash bench/gpu/cudnn_run.sh "$carry" $quick || status=1
fi
# Clocks and throttle reasons after the heavy runs (a throttled card explains slow rows).
nvidia-smi -q -d PERFORMANCE,CLOCK >>"$out/env.txt" 2>&1
tail -60 "$out/bench.log"
exit $status
