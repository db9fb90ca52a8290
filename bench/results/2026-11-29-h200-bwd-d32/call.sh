#!/usr/bin/env bash
# Device call 3 of session 10 (2026-11-29): first GPU run of the d32 wgmma backward
# (SQA_CUDA_BWD=wgmma at head_dim 32, opt-in; helper-built, emulator-checked): its tests,
# compute-sanitizer, the A/B against the mma.sync default (occ); and the raster test of call 2
# at small scale (it ran past 120 s at full scale).
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
echo "== tests"
for t in CudaBackward.WgmmaMatchesReferenceD32 'CudaValidation.*' CudaBackward.SanitizerSmoke CudaBackward.RasterChunksMatchReference; do
  s=$(date +%s); SQA_TEST_SCALE=small SQA_CUDA_BACKEND=own timeout 150 /tmp/c/bin/test_attention_cuda --gtest_brief=1 \
    --gtest_filter="$t" > /tmp/t.txt 2>&1; rc=$?
  { echo "=== $t rc=$rc $(( $(date +%s) - s ))s"; grep -vE "^Running main|^\[==========\]$" /tmp/t.txt | tail -15; } | tee -a $o/tests.txt
done
echo "== sanitizers (SQA_CUDA_BWD=wgmma: d32 wgmma)"
for tool in memcheck racecheck synccheck; do
  SQA_CUDA_BWD=wgmma SQA_TEST_SCALE=small SQA_CUDA_BACKEND=own timeout 150 compute-sanitizer --tool $tool \
    --error-exitcode 9 /tmp/c/bin/test_attention_cuda --gtest_filter=CudaBackward.SanitizerSmoke --gtest_brief=1 > /tmp/san.txt 2>&1
  echo "$tool exit $? $(grep -E 'SUMMARY' /tmp/san.txt)" | tee -a $o/sanitizers.txt
done
echo "== A/B occ vs wgmma at d32"
PYTHONUNBUFFERED=1 timeout 200 python3 bench/gpu/bwd_variants.py --lib /tmp/c/lib/libsqa.so --variants occ,wgmma \
  --configs d32-32k-mha-causal,d32-32k-gqa-causal,d32-32k-sqa-causal,d32-32k-mqa-causal,d32-32k-xsqa-causal \
  --json $o/ab.json 2>&1 | tee $o/ab.txt | tail -12
