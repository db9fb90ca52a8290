#!/usr/bin/env bash
# Device call 4 of 2026-11-29 (session 8): wgmma backward tests + sanitizers + A/B, cuDNN backend
# tests (routing), route sweep with auto.
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/x.tgz -C /tmp/c
export LD_LIBRARY_PATH=/tmp/c/lib:$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")')
cat /tmp/c/BUILD_COMMIT | tee $o/env.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv >> $o/env.txt
echo "== wgmma backward tests"
SQA_CUDA_BACKEND=own timeout 200 /tmp/c/bin/test_attention_cuda --gtest_brief=1 \
  --gtest_filter='CudaBackward.Wgmma*:CudaValidation.Backward*' > $o/tests-bwd.txt 2>&1; echo "rc=$?" >> $o/tests-bwd.txt
tail -25 $o/tests-bwd.txt
echo "== cuDNN backend tests"
timeout 150 /tmp/c/bin/test_cudnn_backend --gtest_brief=1 > $o/tests-cudnn.txt 2>&1; echo "rc=$?" >> $o/tests-cudnn.txt
tail -8 $o/tests-cudnn.txt
echo "== sanitizers (SQA_CUDA_BWD=wgmma)"
for tool in memcheck racecheck; do
  SQA_CUDA_BWD=wgmma SQA_TEST_SCALE=small SQA_CUDA_BACKEND=own timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 \
    /tmp/c/bin/test_attention_cuda --gtest_filter=CudaBackward.SanitizerSmoke --gtest_brief=1 > $o/san-$tool.txt 2>&1
  echo "$tool exit $?" | tee -a $o/san-$tool.txt; grep -E "SUMMARY" $o/san-$tool.txt
done
echo "== backward A/B"
PYTHONUNBUFFERED=1 timeout 200 python3 bench/gpu/bwd_variants.py --lib /tmp/c/lib/libsqa.so --variants occ,wgmma,wgmmak \
  --configs d64-32k-mha-causal,d64-32k-mqa-causal,d64-8k-mha,d128-32k-mha-causal,d128-32k-gqa-causal,d128-8k-mha \
  --json $o/bwd-ab.json > $o/bwd-ab.txt 2>&1
cat $o/bwd-ab.txt | tail -12
echo "== route sweep (auto)"
PYTHONUNBUFFERED=1 timeout 150 python3 bench/gpu/route_sweep.py --lib /tmp/c/lib/libsqa.so --heads 4,8,32 \
  --seqs 1024,4096,16384 --json $o/route.json > $o/route.txt 2>&1
cat $o/route.txt
