#!/usr/bin/env bash
# Device call 7 of 2026-11-29 (session 8): the final backward (one wgmma kernel form, default at
# d64/d128, also in deterministic mode): backward and validation tests, harness group C
# (fwd+bwd incl. the deterministic column), then compute-sanitizer.
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/x.tgz -C /tmp/c
export LD_LIBRARY_PATH=/tmp/c/lib:$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")')
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
echo "== tests"
SQA_CUDA_BACKEND=own timeout 230 /tmp/c/bin/test_attention_cuda --gtest_brief=1 \
  --gtest_filter='CudaBackward.*:CudaValidation.*' > $o/tests.txt 2>&1; echo "rc=$?" >> $o/tests.txt; tail -6 $o/tests.txt
echo "== harness group C"
PYTHONUNBUFFERED=1 timeout 150 python3 bench/gpu/bench_attention.py --lib /tmp/c/lib/libsqa.so --out $o \
  --only 'C d' > $o/bench.log 2>&1; echo "bench rc=$?"; grep -A 20 "## Forward + backward" $o/bench.md
echo "== sanitizers"
f='CudaBackward.SanitizerSmoke:CudaBackward.DeterministicSchemeMatchesReferenceAndRepeatsExactly'
for tool in memcheck racecheck; do
  SQA_TEST_SCALE=small SQA_CUDA_BACKEND=own timeout 100 compute-sanitizer --tool $tool --error-exitcode 9 \
    /tmp/c/bin/test_attention_cuda --gtest_filter="$f" --gtest_brief=1 > /tmp/san.txt 2>&1
  echo "$tool exit $? $(grep -E 'SUMMARY' /tmp/san.txt)" | tee -a $o/sanitizers.txt
done
