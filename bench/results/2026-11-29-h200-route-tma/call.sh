#!/usr/bin/env bash
# Device call 6 of session 10 (2026-11-29), run 37: the auto routing after run 36's sweep (d128
# masked forwards to our TMA-fed kernel at any size, d64 masked up to 1024 tiles, d128 unmasked
# up to 512): the cuDNN backend and routing tests, then the default-path table against SDPA.
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
echo "== cuDNN backend tests"
SQA_TEST_SCALE=small timeout 120 /tmp/c/bin/test_cudnn_backend --gtest_brief=1 > /tmp/t.txt 2>&1; echo "rc=$?" | tee $o/tests.txt
grep -vE "^Running main" /tmp/t.txt | tail -8 | tee -a $o/tests.txt
echo "== default path vs SDPA"
PYTHONUNBUFFERED=1 timeout 400 python3 bench/gpu/bench_cudnn.py --lib /tmp/c/lib/libsqa.so --out $o > $o/cudnn.log 2>&1
echo "bench_cudnn rc=$?"; tail -45 $o/cudnn.md 2>/dev/null | cut -c1-200
