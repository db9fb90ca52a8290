#!/usr/bin/env bash
# The cuDNN backend on the GPU machine: its correctness tests (GPU vs the float64 reference,
# test_cudnn_backend), then the d = 64 / 128 group with own kernels, cuDNN backend, default path
# and PyTorch SDPA (FA2, cuDNN) in one process (bench_cudnn.py). Logs, cudnn.json and cudnn.md
# go to $OUT.
#   bench/gpu/cudnn_run.sh CARRY_DIR [--quick]
# CARRY_DIR holds bin/test_cudnn_backend and lib/libsqa.so (bench/gpu/pack.sh); libcudnn comes
# from the machine's PyTorch wheel (nvidia-cudnn), the same copy torch's SDPA uses.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
carry=$(cd "$1" && pwd)
shift
out=${OUT:-bench/results/run-cudnn-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$out"
cudnn_lib=$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH=${cudnn_lib:+$cudnn_lib:}$carry/lib:${LD_LIBRARY_PATH:-}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
  echo "commit ${SQA_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}; libcudnn from ${cudnn_lib:-system}"
  ls "$cudnn_lib" 2>/dev/null | grep -E '^libcudnn\.so' | head -3
} | tee "$out/env.txt"
status=0
echo "== cuDNN backend tests (GPU vs float64 reference)"
timeout ${TEST_TIMEOUT:-150} "$carry/bin/test_cudnn_backend" --gtest_brief=1 2>&1 | tee "$out/tests.log" | tail -15
[ "${PIPESTATUS[0]}" = 0 ] || status=1
echo "== d64/d128 group: own, cuDNN backend, default, SDPA"
PYTHONUNBUFFERED=1 timeout ${BENCH_TIMEOUT:-240} python3 bench/gpu/bench_cudnn.py \
  --lib "$carry/lib/libsqa.so" --out "$out" "$@" >"$out/bench.log" 2>&1 || status=1
tail -45 "$out/bench.log"
exit $status
