#!/usr/bin/env bash
# Device call 8 of session 11 (2026-11-30), the session's final binary: d64 forward default = 3
# warpgroups (192-row tiles) when they fill 4 waves, else 2; `auto` keeps d64 masked forwards on
# our kernel at any size. Routing tests, the forward tests at small scale, harness group C at
# d64, then the default-path table against SDPA (bench_cudnn.py).
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; } > $o/env.txt
SQA_TEST_SCALE=small timeout 90 /tmp/c/bin/test_cudnn_backend --gtest_brief=1 > /tmp/t.txt 2>&1; rc=$?
{ echo "test_cudnn_backend rc=$rc"; grep -vE "^Running main" /tmp/t.txt | tail -6; } | tee $o/tests.txt
s=$(date +%s); SQA_TEST_SCALE=small timeout 100 /tmp/c/bin/test_attention_cuda --gtest_brief=1 --gtest_filter='CudaForward.*:CudaValidation.*' > /tmp/t.txt 2>&1; rc=$?
{ echo "test_attention_cuda CudaForward.*:CudaValidation.* rc=$rc $(( $(date +%s) - s ))s"; grep -vE "^Running main" /tmp/t.txt | tail -6; } | tee -a $o/tests.txt
PYTHONUNBUFFERED=1 timeout 60 python3 bench/gpu/bench_attention.py --lib /tmp/c/lib/libsqa.so --out $o \
  --only 'C d64' > /tmp/bench.log 2>&1; echo "bench rc=$?"; head -3 $o/bench.md
PYTHONUNBUFFERED=1 timeout 170 python3 bench/gpu/bench_cudnn.py --lib /tmp/c/lib/libsqa.so --out $o > $o/cudnn.log 2>&1
echo "bench_cudnn rc=$?"; tail -45 $o/cudnn.md 2>/dev/null | cut -c1-220
