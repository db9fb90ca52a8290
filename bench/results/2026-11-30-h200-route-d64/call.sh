#!/usr/bin/env bash
# Device call 9 of session 11 (2026-11-30): `auto` sends d64 unmasked forwards from 4096 tiles to
# our 3-warpgroup kernel: the routing tests, and own / cuDNN / auto at d64 MHA 32k unmasked.
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; } > $o/env.txt
SQA_TEST_SCALE=small timeout 60 /tmp/c/bin/test_cudnn_backend --gtest_brief=1 --gtest_filter='CudnnRouting.*' > /tmp/t.txt 2>&1; rc=$?
{ echo "test_cudnn_backend CudnnRouting.* rc=$rc"; grep -vE "^Running main" /tmp/t.txt | tail -6; } | tee $o/tests.txt
PYTHONUNBUFFERED=1 timeout 60 python3 bench/gpu/route_sweep.py --lib /tmp/c/lib/libsqa.so --dims 64 --heads 16 \
  --seqs 32768 --masks none --rounds 5 --json $o/route.json 2>&1 | tee $o/route.txt
