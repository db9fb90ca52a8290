#!/usr/bin/env bash
# Device call 6 of session 9 (2026-11-29): grid raster of the wgmma forward and the dK/dV kernels
# (SQA_CUDA_RASTER = heads at a time; 0 = all interleaved, the old order). Nsight (call 5) showed
# our dK/dV kernel at 85% L2 hits and 550 GB/s DRAM against cuDNN's 96% / 159 GB/s on the same
# problem. Tests of the new orders, then A/B of forward and fwd+bwd against SDPA.
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/r.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
echo "== tests"
SQA_TEST_SCALE=small SQA_CUDA_BACKEND=own timeout 150 /tmp/c/bin/test_attention_cuda --gtest_brief=1 \
  --gtest_filter='CudaBackward.RasterChunksMatchReference:CudaForward.WgmmaMatchesReference' > $o/tests.txt 2>&1
echo "rc=$?" >> $o/tests.txt; tail -4 $o/tests.txt
v=SQA_CUDA_RASTER=0,SQA_CUDA_RASTER=1,SQA_CUDA_RASTER=2,SQA_CUDA_RASTER=4
echo "== forward A/B"
PYTHONUNBUFFERED=1 timeout 150 python3 bench/gpu/fwd_variants.py --lib /tmp/c/lib/libsqa.so --variants $v \
  --configs d64-32k-mha,d64-32k-mha-causal,d128-32k-mha,d128-32k-mha-causal,d128-32k-xsqa-causal \
  --json $o/fwd.json 2>&1 | tee $o/fwd.txt
echo "== fwd+bwd A/B"
PYTHONUNBUFFERED=1 timeout 240 python3 bench/gpu/bwd_variants.py --lib /tmp/c/lib/libsqa.so --variants $v \
  --configs d64-32k-mha,d64-32k-mha-causal,d128-32k-mha,d128-32k-sqa-causal,d128-32k-xsqa \
  --json $o/bwd.json 2>&1 | tee $o/bwd.txt
