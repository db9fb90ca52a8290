#!/usr/bin/env bash
# Device call 8 of session 9 (2026-11-29): every CUDA attention test and every cuDNN backend
# test on the session's final binary (small scale).
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/f.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
echo "== test_attention_cuda"
SQA_TEST_SCALE=small timeout 330 /tmp/c/bin/test_attention_cuda --gtest_brief=1 > $o/attention.txt 2>&1
echo "rc=$?" >> $o/attention.txt; tail -5 $o/attention.txt
echo "== test_cudnn_backend"
SQA_TEST_SCALE=small timeout 150 /tmp/c/bin/test_cudnn_backend --gtest_brief=1 > $o/cudnn.txt 2>&1
echo "rc=$?" >> $o/cudnn.txt; tail -5 $o/cudnn.txt
