#!/usr/bin/env bash
# Device call 7 of session 10 (2026-11-29), run 38: the session's final binary with the shipped
# defaults (TMA-fed wgmma forward and backward at d64/d128, the new routing): every CUDA attention
# test at small scale, the transformer's CUDA tests, sqa.torch, then harness groups C-F (own
# kernels, no variant variables set).
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
echo "== test_attention_cuda (small scale)"
s=$(date +%s); SQA_TEST_SCALE=small timeout 220 /tmp/c/bin/test_attention_cuda --gtest_brief=1 > /tmp/t.txt 2>&1; rc=$?
{ echo "test_attention_cuda rc=$rc $(( $(date +%s) - s ))s"; grep -vE "^Running main" /tmp/t.txt | tail -8; } | tee $o/tests.txt
echo "== test_model_cuda"
timeout 60 /tmp/c/bin/test_model_cuda --gtest_brief=1 > /tmp/t.txt 2>&1; { echo "test_model_cuda rc=$?"; tail -3 /tmp/t.txt; } | tee -a $o/tests.txt
echo "== sqa.torch"
(cd python && SQA_LIBRARY=/tmp/c/lib/libsqa.so PYTHONPATH=$PWD:$PWD/tests timeout 90 python3 -m pytest -q -rf --tb=line tests/test_torch.py 2>&1 | tail -3) | tee -a $o/tests.txt
echo "== harness groups C-F"
PYTHONUNBUFFERED=1 timeout 200 python3 bench/gpu/bench_attention.py --lib /tmp/c/lib/libsqa.so --out $o \
  --only 'C d,D d128,E rSQA,F decode' > /tmp/bench.log 2>&1; echo "bench rc=$?"; head -3 $o/bench.md; grep -E "^\| (C|D|E|F) " $o/bench.md | cut -c1-230
