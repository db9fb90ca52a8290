#!/usr/bin/env bash
# Device call 6 of 2026-11-29 (session 8): the faster wgmma backward candidate (tests, sanitizers,
# A/B against wgmma), the route sweep for the backward, and the cuDNN backend's default-path table.
#   bash .carry-lead/call6.sh OUT VARIANTS TEST_FILTER
set -uo pipefail
o=${1:?out}
variants=${2:-wgmma}
filter=${3:-CudaBackward.Wgmma*}
mkdir -p /tmp/c && tar -xzf .carry-lead/x.tgz -C /tmp/c
export LD_LIBRARY_PATH=/tmp/c/lib:$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")')
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
echo "== tests ($filter)"
SQA_CUDA_BACKEND=own timeout 200 /tmp/c/bin/test_attention_cuda --gtest_brief=1 --gtest_filter="$filter" \
  > $o/tests.txt 2>&1; echo "rc=$?" >> $o/tests.txt; tail -4 $o/tests.txt
echo "== sanitizers"
for v in ${SAN_VARIANTS:-${variants//,/ }}; do
  for tool in memcheck racecheck; do
    SQA_CUDA_BWD=$v SQA_TEST_SCALE=small SQA_CUDA_BACKEND=own timeout 120 compute-sanitizer --tool $tool \
      --error-exitcode 9 /tmp/c/bin/test_attention_cuda --gtest_filter=CudaBackward.SanitizerSmoke --gtest_brief=1 \
      > /tmp/san.txt 2>&1
    echo "$v $tool exit $? $(grep -E 'SUMMARY' /tmp/san.txt)" | tee -a $o/sanitizers.txt
  done
done
echo "== backward A/B"
PYTHONUNBUFFERED=1 timeout 200 python3 bench/gpu/bwd_variants.py --lib /tmp/c/lib/libsqa.so --variants $variants \
  --configs d64-32k-mha-causal,d64-32k-mqa-causal,d64-8k-mha,d128-32k-mha-causal,d128-32k-gqa-causal,d128-8k-mha \
  --json $o/bwd-ab.json > $o/bwd-ab.txt 2>&1; tail -8 $o/bwd-ab.txt
echo "== route sweep"
PYTHONUNBUFFERED=1 timeout 120 python3 bench/gpu/route_sweep.py --lib /tmp/c/lib/libsqa.so --heads 4,8,32 \
  --seqs 1024,4096,16384 --json $o/route.json > $o/route.txt 2>&1; cat $o/route.txt
