#!/usr/bin/env bash
# Device call 5 of 2026-11-29 (session 8): every CUDA attention test and the sanitizers with the
# new defaults (wgmma ping-pong forward, wgmma dK/dV backward at d64/d128), then harness groups
# C, D, E (own kernels against SDPA).
set -uo pipefail
o=${1:?out}
export OUT=/tmp/h5
mkdir -p $OUT
TEST_TIMEOUT=330 timeout 590 bash bench/gpu/run.sh --carry .carry-lead/x.tgz --only 'C d,D d,E r' > $OUT/run.txt 2>&1
echo "run.sh rc=$?" >> $OUT/run.txt
tar czf $o/h5.tgz -C /tmp h5
grep -E "==|PASSED|FAILED|exit|SUMMARY|rc=" $OUT/run.txt
