#!/usr/bin/env bash
# Device call 4 of session 10 (2026-11-29): first GPU run of the forward's TMA producer form
# (SQA_CUDA_FWD=wgmmatma at d64/d128, opt-in; helper-built, emulator-checked): its tests,
# compute-sanitizer, the A/B against the ping-pong default (wgmmapp), then harness group C with
# it as the own forward.
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
echo "== tests"
for t in 'CudaForward.WgmmaTma*' 'CudaValidation.*' CudaForward.SanitizerSmoke; do
  s=$(date +%s); SQA_CUDA_BACKEND=own timeout 150 /tmp/c/bin/test_attention_cuda --gtest_brief=1 \
    --gtest_filter="$t" > /tmp/t.txt 2>&1; rc=$?
  { echo "=== $t rc=$rc $(( $(date +%s) - s ))s"; grep -vE "^Running main|^\[==========\]$" /tmp/t.txt | tail -15; } | tee -a $o/tests.txt
done
echo "== sanitizers (SQA_CUDA_FWD=wgmmatma)"
for tool in memcheck racecheck synccheck; do
  SQA_CUDA_FWD=wgmmatma SQA_TEST_SCALE=small SQA_CUDA_BACKEND=own timeout 150 compute-sanitizer --tool $tool \
    --error-exitcode 9 /tmp/c/bin/test_attention_cuda --gtest_filter=CudaForward.SanitizerSmoke --gtest_brief=1 > /tmp/san.txt 2>&1
  echo "$tool exit $? $(grep -E 'SUMMARY' /tmp/san.txt)" | tee -a $o/sanitizers.txt
done
echo "== A/B wgmmapp vs wgmmatma"
PYTHONUNBUFFERED=1 timeout 150 python3 bench/gpu/fwd_variants.py --lib /tmp/c/lib/libsqa.so --variants wgmmapp,wgmmatma \
  --configs d64-32k-mha,d64-32k-mha-causal,d128-32k-mha,d128-32k-mha-causal,d128-32k-xsqa,d128-32k-sqa,d128-32k-xsqa-causal \
  --json $o/ab.json 2>&1 | tee $o/ab.txt | tail -12
echo "== harness group C (SQA_CUDA_FWD=wgmmatma)"
SQA_CUDA_FWD=wgmmatma PYTHONUNBUFFERED=1 timeout 170 python3 bench/gpu/bench_attention.py --lib /tmp/c/lib/libsqa.so --out $o \
  --only 'C d' > /tmp/bench.log 2>&1; echo "bench rc=$?"; grep -A 16 "^## Forward$" $o/bench.md | cut -c1-220
