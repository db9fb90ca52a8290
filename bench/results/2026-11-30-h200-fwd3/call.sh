#!/usr/bin/env bash
# Device call 6 of session 11 (2026-11-30): first GPU run of the d64 forward with three consumer
# warpgroups (SQA_CUDA_FWD=wgmmatma3, 192-row tiles; helper-built, emulator-checked): tests,
# compute-sanitizer, A/B against the 2-warpgroup TMA kernel. Then the forward raster at d128
# with many KV heads at 8k/16k (below the 256 MiB threshold).
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; } > $o/env.txt
echo "== tests" | tee $o/tests.txt
s=$(date +%s); SQA_CUDA_BACKEND=own timeout 200 /tmp/c/bin/test_attention_cuda --gtest_brief=1 \
  --gtest_filter='CudaForward.WgmmaTma3*:CudaValidation.*' > /tmp/t.txt 2>&1; rc=$?
{ echo "=== WgmmaTma3*, CudaValidation.* rc=$rc $(( $(date +%s) - s ))s"; grep -vE "^Running main|^\[==========\]$" /tmp/t.txt | tail -15; } | tee -a $o/tests.txt
for tool in memcheck racecheck synccheck; do
  SQA_CUDA_FWD=wgmmatma3 SQA_TEST_SCALE=small SQA_CUDA_BACKEND=own timeout 200 compute-sanitizer --tool $tool \
    --error-exitcode 9 /tmp/c/bin/test_attention_cuda --gtest_filter=CudaForward.SanitizerSmoke --gtest_brief=1 > /tmp/san.txt 2>&1
  echo "$tool exit $? $(grep -E 'SUMMARY' /tmp/san.txt) $(grep -E 'FAILED|Failure' /tmp/san.txt | head -3)" | tee -a $o/tests.txt
done
echo "== A/B d64: wgmmatma vs wgmmatma3" | tee $o/ab.txt
PYTHONUNBUFFERED=1 timeout 200 python3 bench/gpu/fwd_variants.py --lib /tmp/c/lib/libsqa.so --variants wgmmatma,wgmmatma3 \
  --configs d64-32k-mha,d64-32k-mha-causal,d64-32k-xsqa,d64-32k-sqa,d64-32k-xsqa-causal \
  --json $o/ab-fwd3.json 2>&1 | tee -a $o/ab.txt | tail -7
echo "== A/B d128 raster 2 with many KV heads below 256 MiB" | tee -a $o/ab.txt
PYTHONUNBUFFERED=1 timeout 150 python3 bench/gpu/fwd_variants.py --lib /tmp/c/lib/libsqa.so --variants wgmmatma,SQA_CUDA_RASTER=2 \
  --configs d128-8k-mha32,d128-8k-mha64,d128-16k-mha32 --json $o/ab-raster.json 2>&1 | tee -a $o/ab.txt | tail -5
