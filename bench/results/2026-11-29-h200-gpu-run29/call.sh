#!/usr/bin/env bash
# Device call 7 of session 9 (2026-11-29), run 29: the backward raster default (4 of > 8 (KV
# head, split) units at a time): backward tests, an A/B on causal MHA at d128 (32 units; not in
# call 6) against the old order, then harness group C (own d64/d128 fwd and fwd+bwd vs SDPA).
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/r.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
echo "== tests"
SQA_TEST_SCALE=small SQA_CUDA_BACKEND=own timeout 150 /tmp/c/bin/test_attention_cuda --gtest_brief=1 \
  --gtest_filter='CudaBackward.RasterChunksMatchReference:CudaBackward.EveryLayoutHeadDimAndMask:CudaBackward.DeterministicSchemeMatchesReferenceAndRepeatsExactly:CudaBackward.WgmmaMatchesReference' > $o/tests.txt 2>&1
echo "rc=$?" >> $o/tests.txt; tail -4 $o/tests.txt
echo "== fwd+bwd A/B (default vs the old order)"
PYTHONUNBUFFERED=1 timeout 120 python3 bench/gpu/bwd_variants.py --lib /tmp/c/lib/libsqa.so \
  --variants wgmma,SQA_CUDA_RASTER=0 --configs d128-32k-mha-causal32,d64-32k-mha --json $o/ab.json 2>&1 | tee $o/ab.txt
echo "== harness group C"
PYTHONUNBUFFERED=1 timeout 170 python3 bench/gpu/bench_attention.py --lib /tmp/c/lib/libsqa.so --out $o \
  --only 'C d' > $o/bench.log 2>&1; echo "bench rc=$?"; grep -A 16 "## Forward + backward" $o/bench.md | cut -c1-200
