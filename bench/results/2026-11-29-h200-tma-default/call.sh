#!/usr/bin/env bash
# Device call 2 of session 10 (2026-11-29): the TMA-producer backward as the default (ef5746a).
# Each CudaBackward test on its own with a time limit (call 1's single run of all of them at full
# scale ran past 200 s), then the transformer's CUDA tests and sqa.torch on the GPU.
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
echo "== backward tests, one at a time (s = seconds)"
for t in WgmmaTmaMatchesWgmmaAtScale WgmmaTmaMatchesReference WgmmaMatchesReference RandomSweepMatchesReference \
         EveryLayoutHeadDimAndMask DkDvHeadSplitsMatchReference DeterministicSchemeMatchesReferenceAndRepeatsExactly \
         RasterChunksMatchReference SanitizerSmoke RegisterCapVariantsMatchReference; do
  s=$(date +%s); SQA_CUDA_BACKEND=own timeout 120 /tmp/c/bin/test_attention_cuda --gtest_brief=1 \
    --gtest_filter="CudaBackward.$t" > $o/test-$t.txt 2>&1; rc=$?
  echo "$t rc=$rc $(( $(date +%s) - s ))s $(grep -E '^\[  (PASSED|FAILED) ' $o/test-$t.txt | head -1)" | tee -a $o/tests.txt
done
echo "== other CUDA attention tests (small scale)"
SQA_TEST_SCALE=small timeout 150 /tmp/c/bin/test_attention_cuda --gtest_brief=1 --gtest_filter='-CudaBackward.*' > $o/test-rest.txt 2>&1
echo "rc=$?"; tail -3 $o/test-rest.txt
echo "== test_model_cuda"
timeout 150 /tmp/c/bin/test_model_cuda --gtest_brief=1 > $o/test-model-cuda.txt 2>&1; echo "rc=$?"; tail -3 $o/test-model-cuda.txt
echo "== sqa.torch on the GPU"
(cd python && SQA_LIBRARY=/tmp/c/lib/libsqa.so PYTHONPATH=$PWD:$PWD/tests timeout 120 python3 -m pytest -q -rf --tb=line tests/test_torch.py 2>&1 | tail -6) | tee $o/pytest.txt
