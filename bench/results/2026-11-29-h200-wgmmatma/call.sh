#!/usr/bin/env bash
# Device call 1 of session 10 (2026-11-29): first GPU run of the fixed TMA producer-warp backward
# (SQA_CUDA_BWD=wgmmatma; the consumers' K/V cp.async now committed before the wait). Backward
# tests with wgmmatma incl. the at-scale check, compute-sanitizer on it, the A/B whose error
# column failed in run 31, then harness group C with wgmmatma as the backward.
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
export SQA_CUDA_UNVERIFIED=1
echo "== backward tests (wgmmatma as the backward)"
SQA_CUDA_BWD=wgmmatma SQA_CUDA_BACKEND=own timeout 200 /tmp/c/bin/test_attention_cuda --gtest_brief=1 \
  --gtest_filter='CudaBackward.*' > $o/tests.txt 2>&1; echo "rc=$?" >> $o/tests.txt; tail -6 $o/tests.txt
echo "== sanitizers (wgmmatma)"
for tool in memcheck racecheck synccheck; do
  SQA_CUDA_BWD=wgmmatma SQA_TEST_SCALE=small SQA_CUDA_BACKEND=own timeout 120 compute-sanitizer --tool $tool \
    --error-exitcode 9 /tmp/c/bin/test_attention_cuda --gtest_filter=CudaBackward.SanitizerSmoke --gtest_brief=1 > /tmp/san.txt 2>&1
  echo "$tool exit $? $(grep -E 'SUMMARY' /tmp/san.txt)" | tee -a $o/sanitizers.txt
done
echo "== A/B wgmma vs wgmmatma"
PYTHONUNBUFFERED=1 timeout 150 python3 bench/gpu/bwd_variants.py --lib /tmp/c/lib/libsqa.so --variants wgmma,wgmmatma \
  --configs d64-8k-mha,d128-8k-mha,d64-32k-mha,d128-32k-mha,d128-32k-sqa-causal,d128-32k-mha-causal32 \
  --json $o/ab.json 2>&1 | tee $o/ab.txt | tail -20
echo "== harness group C (SQA_CUDA_BWD=wgmmatma)"
SQA_CUDA_BWD=wgmmatma PYTHONUNBUFFERED=1 timeout 170 python3 bench/gpu/bench_attention.py --lib /tmp/c/lib/libsqa.so --out $o \
  --only 'C d' > $o/bench.log 2>&1; echo "bench rc=$?"; grep -A 16 "## Forward + backward" $o/bench.md | cut -c1-200
