#!/usr/bin/env bash
# Device call 4 of session 11 (2026-11-30): the session's final binary with the shipped defaults
# (deterministic d64 backward on TMA, forward raster 2 at d128 above 256 MiB of K/V): every CUDA
# attention test at small scale, the transformer's CUDA tests, sqa.torch, the raster default
# against all heads interleaved, then harness groups C-F (own kernels, no variant variables set);
# last, Nsight on the 32k d128 MHA backward at raster 1 (DRAM reads; raster 4 read 86 GB).
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; } > $o/env.txt
echo "== test_attention_cuda (small scale)"
s=$(date +%s); SQA_TEST_SCALE=small timeout 220 /tmp/c/bin/test_attention_cuda --gtest_brief=1 > /tmp/t.txt 2>&1; rc=$?
{ echo "test_attention_cuda rc=$rc $(( $(date +%s) - s ))s"; grep -vE "^Running main" /tmp/t.txt | tail -8; } | tee $o/tests.txt
echo "== test_model_cuda"
timeout 60 /tmp/c/bin/test_model_cuda --gtest_brief=1 > /tmp/t.txt 2>&1; { echo "test_model_cuda rc=$?"; tail -3 /tmp/t.txt; } | tee -a $o/tests.txt
echo "== sqa.torch"
(cd python && SQA_LIBRARY=/tmp/c/lib/libsqa.so PYTHONPATH=$PWD:$PWD/tests timeout 90 python3 -m pytest -q -rf --tb=line tests/test_torch.py 2>&1 | tail -3) | tee -a $o/tests.txt
echo "== raster default vs all heads" | tee $o/ab.txt
PYTHONUNBUFFERED=1 timeout 120 python3 bench/gpu/fwd_variants.py --lib /tmp/c/lib/libsqa.so --variants wgmmatma,SQA_CUDA_RASTER=0 \
  --configs d128-32k-mha,d128-32k-mha-causal,d128-32k-ssqa --json $o/ab-fwd.json 2>&1 | tee -a $o/ab.txt | tail -4
echo "== harness groups C-F"
PYTHONUNBUFFERED=1 timeout 240 python3 bench/gpu/bench_attention.py --lib /tmp/c/lib/libsqa.so --out $o \
  --only 'C d,D d128,E rSQA,F decode' > /tmp/bench.log 2>&1; echo "bench rc=$?"; head -3 $o/bench.md; grep -E "^\| (C|D|E|F) " $o/bench.md | cut -c1-230
m=dram__bytes_read.sum,lts__t_sector_hit_rate.pct,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
SQA_CUDA_RASTER=1 SQA_CUDA_BACKEND=own timeout 100 ncu --clock-control none --kernel-name regex:flash_bwd_dkdv_wgmma --launch-count 1 \
  --section SpeedOfLight --metrics "$m" python3 bench/gpu/bwd_variants.py --lib /tmp/c/lib/libsqa.so --variants wgmmatma \
  --configs d128-32k-mha --rounds 1 > /tmp/ncu.txt 2>&1
{ echo "=== bwd d128 MHA 32k raster 1"; grep -E "Duration|SM Frequency|dram__|lts__|hmma" /tmp/ncu.txt; } | tee $o/ncu.txt
