#!/usr/bin/env bash
# Device call 3 of session 11 (2026-11-30): cuDNN's d128 MHA forward (a persistent grid) reads
# each K / V byte from DRAM about once (call 2: 0.96 GB, L2 hits 99%); ours 55-121 GB. Re-measure
# the grid raster (1 / 2 / 4 heads at a time) on the TMA forward (run 28 measured it on the
# cp.async kernel) and in fwd+bwd; Nsight on the forward at raster 1 and on the backward at 32k.
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; } > $o/env.txt
echo "== forward raster A/B" | tee $o/ab.txt
PYTHONUNBUFFERED=1 timeout 200 python3 bench/gpu/fwd_variants.py --lib /tmp/c/lib/libsqa.so \
  --variants wgmmatma,SQA_CUDA_RASTER=1,SQA_CUDA_RASTER=2,SQA_CUDA_RASTER=4 \
  --configs d128-32k-mha,d128-32k-mha-causal,d128-32k-ssqa,d128-32k-xsqa,d128-32k-gqa,d64-32k-mha,d64-32k-xsqa,d64-32k-mha-causal \
  --json $o/ab-fwd.json 2>&1 | tee -a $o/ab.txt | tail -10
echo "== fwd+bwd raster A/B (the variable sets both passes; unset: fwd all heads, bwd 4 units)" | tee -a $o/ab.txt
PYTHONUNBUFFERED=1 timeout 200 python3 bench/gpu/bwd_variants.py --lib /tmp/c/lib/libsqa.so \
  --variants wgmmatma,SQA_CUDA_RASTER=1,SQA_CUDA_RASTER=2,SQA_CUDA_RASTER=4 \
  --configs d128-32k-mha,d128-32k-xsqa,d64-32k-mha,d64-32k-xsqa \
  --json $o/ab-fwdbwd.json 2>&1 | tee -a $o/ab.txt | tail -6
m=dram__bytes_read.sum,lts__t_sector_hit_rate.pct
for r in 1 2; do
  SQA_CUDA_RASTER=$r SQA_CUDA_BACKEND=own timeout 120 ncu --clock-control none --kernel-name regex:flash_fwd_wgmma_tma --launch-count 1 \
    --section SpeedOfLight --metrics "$m" python3 bench/gpu/fwd_variants.py --lib /tmp/c/lib/libsqa.so --rounds 1 \
    --variants wgmmatma --configs d128-32k-mha > /tmp/ncu.txt 2>&1
  { echo "=== fwd d128 MHA raster $r"; grep -E "Duration|SM Frequency|DRAM Through|dram__|lts__" /tmp/ncu.txt; } | tee -a $o/ncu.txt
done
for k in flash_bwd_dkdv_wgmma flash_bprop; do
  SQA_CUDA_BACKEND=own timeout 150 ncu --clock-control none --kernel-name regex:$k --launch-count 1 \
    --section SpeedOfLight --metrics "$m,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active" \
    python3 bench/gpu/bwd_variants.py --lib /tmp/c/lib/libsqa.so --variants wgmmatma --configs d128-32k-mha --rounds 1 > /tmp/ncu.txt 2>&1
  { echo "=== bwd d128 MHA 32k $k"; grep -E "Duration|SM Frequency|DRAM Through|dram__|lts__|hmma|\(132|\([0-9]+, 1, 1\)" /tmp/ncu.txt | head -12; } | tee -a $o/ncu.txt
done
