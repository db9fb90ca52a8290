#!/usr/bin/env bash
# Device call 9 of session 9 (2026-11-29): first GPU run of the TMA producer-warp backward
# (SQA_CUDA_BWD=wgmmatma, opt-in): its reference test at small scale, then an A/B against the
# default wgmma kernel (fwd+bwd vs SDPA). Short: the session's device time is nearly spent.
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
echo "== test"
SQA_TEST_SCALE=small SQA_CUDA_BACKEND=own timeout 90 /tmp/c/bin/test_attention_cuda --gtest_brief=1 \
  --gtest_filter='CudaBackward.WgmmaTmaMatchesReference:CudaBackward.WgmmaMatchesReference' > $o/tests.txt 2>&1
echo "rc=$?" >> $o/tests.txt; grep -E "PASSED|FAILED|Failure|error" $o/tests.txt | head -8
echo "== A/B"
PYTHONUNBUFFERED=1 timeout 110 python3 bench/gpu/bwd_variants.py --lib /tmp/c/lib/libsqa.so --variants wgmma,wgmmatma \
  --configs d64-32k-mha,d128-32k-mha,d128-32k-sqa-causal --rounds 3 --json $o/ab.json 2>&1 | tee $o/ab.txt
