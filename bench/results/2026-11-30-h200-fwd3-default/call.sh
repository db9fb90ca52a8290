#!/usr/bin/env bash
# Device call 7 of session 11 (2026-11-30): wgmmatma3 as the d64 default (dense) and the wider
# forward raster rule: every CUDA attention test at small scale, the cuDNN backend (routing)
# tests, route sweeps at d64 with the 2- and 3-warpgroup forward (own vs cuDNN, for `auto` and
# for where 192-row tiles leave the GPU short of CTAs), then harness groups C-F.
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; } > $o/env.txt
s=$(date +%s); SQA_TEST_SCALE=small timeout 220 /tmp/c/bin/test_attention_cuda --gtest_brief=1 > /tmp/t.txt 2>&1; rc=$?
{ echo "test_attention_cuda rc=$rc $(( $(date +%s) - s ))s"; grep -vE "^Running main" /tmp/t.txt | tail -8; } | tee $o/tests.txt
SQA_TEST_SCALE=small timeout 120 /tmp/c/bin/test_cudnn_backend --gtest_brief=1 > /tmp/t.txt 2>&1; rc=$?
{ echo "test_cudnn_backend rc=$rc"; grep -vE "^Running main" /tmp/t.txt | tail -6; } | tee -a $o/tests.txt
timeout 60 /tmp/c/bin/test_model_cuda --gtest_brief=1 > /tmp/t.txt 2>&1; { echo "test_model_cuda rc=$?"; tail -2 /tmp/t.txt; } | tee -a $o/tests.txt
for f in wgmmatma wgmmatma3; do
  echo "== route sweep d64, SQA_CUDA_FWD=$f" | tee -a $o/route.txt
  SQA_CUDA_FWD=$f PYTHONUNBUFFERED=1 timeout 150 python3 bench/gpu/route_sweep.py --lib /tmp/c/lib/libsqa.so --dims 64 \
    --heads 4,16 --seqs 2048,4096,8192,32768 --rounds 3 --json $o/route-$f.json 2>&1 | tee -a $o/route.txt | tail -17
done
echo "== harness groups C-F"
PYTHONUNBUFFERED=1 timeout 240 python3 bench/gpu/bench_attention.py --lib /tmp/c/lib/libsqa.so --out $o \
  --only 'C d,D d128,E rSQA,F decode' > /tmp/bench.log 2>&1; echo "bench rc=$?"; head -3 $o/bench.md
