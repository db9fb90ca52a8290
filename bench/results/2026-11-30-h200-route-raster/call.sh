#!/usr/bin/env bash
# Device call 5 of session 11 (2026-11-30): with the forward raster (2 heads at a time at d128
# above 256 MiB of K/V), is our kernel now faster than the cuDNN backend on large unmasked d128
# problems, which `auto` sends to cuDNN above 512 tiles? Route sweep around the raster threshold.
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; } > $o/env.txt
PYTHONUNBUFFERED=1 timeout 400 python3 bench/gpu/route_sweep.py --lib /tmp/c/lib/libsqa.so --dims 128 --masks none \
  --heads 8,16,32,64 --seqs 8192,16384,32768,65536 --json $o/route.json 2>&1 | tee $o/route.txt
