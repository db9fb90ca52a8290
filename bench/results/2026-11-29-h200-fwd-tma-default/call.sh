#!/usr/bin/env bash
# Device call 5 of session 10 (2026-11-29): the forward's TMA producer form as the default at
# d64/d128 (326a187): the CUDA forward tests at small scale, then the route sweep (own vs sqa's
# cuDNN backend over grid sizes) that sets where the default path (auto) sends d64/d128 forwards.
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
echo "== forward tests (small scale)"
s=$(date +%s); SQA_TEST_SCALE=small SQA_CUDA_BACKEND=own timeout 200 /tmp/c/bin/test_attention_cuda --gtest_brief=1 \
  --gtest_filter='CudaForward.*:CudaValidation.*:CudaDecode*' > /tmp/t.txt 2>&1; rc=$?
{ echo "rc=$rc $(( $(date +%s) - s ))s"; grep -vE "^Running main" /tmp/t.txt | tail -12; } | tee $o/tests.txt
echo "== route sweep"
PYTHONUNBUFFERED=1 timeout 300 python3 bench/gpu/route_sweep.py --lib /tmp/c/lib/libsqa.so --dims 64,128 \
  --heads 4,8,16,32 --seqs 2048,4096,8192,16384,32768 --rounds 3 --json $o/route.json 2>&1 | tee $o/route.txt | tail -90
