#!/usr/bin/env bash
# Device call 4 of session 9 (2026-11-29), run 27: main after the session's changes (unified cuDNN
# forward graph, stats-free inference graphs; wgmma2 removed): the default-path table with the
# order-bias fix (bench_cudnn.py: same filler before every timed call, shuffled order), then
# harness group C (own d64/d128 fwd and fwd+bwd against SDPA, the 0.8x cuDNN target).
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/m.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
echo "== bench_cudnn"
PYTHONUNBUFFERED=1 timeout 420 python3 bench/gpu/bench_cudnn.py --lib /tmp/c/lib/libsqa.so --out $o > $o/bench-cudnn.log 2>&1
echo "bench_cudnn rc=$?"; grep -E "^\| (64|128) " $o/cudnn.md | awk -F'|' '{print $2,$3,$4,$5,$13,$14,$15,$16}'
echo "== harness group C"
PYTHONUNBUFFERED=1 timeout 150 python3 bench/gpu/bench_attention.py --lib /tmp/c/lib/libsqa.so --out $o \
  --only 'C d' > $o/bench.log 2>&1; echo "bench rc=$?"; grep -B2 -A 16 "## Forward + backward" $o/bench.md | cut -c1-220
