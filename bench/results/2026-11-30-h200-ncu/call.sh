#!/usr/bin/env bash
# Device call 2 of session 11 (2026-11-30): Nsight Compute to decide the next step for the d128
# MHA forward (is it the DRAM traffic? raster 8 and GQA 32/8 against MHA; cuDNN's forward) and
# for the backward (our TMA dK/dV kernel against cuDNN's bprop, d128 MHA 8k).
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; } > $o/env.txt
m=dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,lts__t_sector_hit_rate.pct
m+=,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active
for r in barrier long_scoreboard wait math_pipe_throttle mio_throttle short_scoreboard; do
  m+=,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio; done
f() {  # name, kernel regex, env, fwd_variants args
  local name=$1 k=$2 e=$3; shift 3
  env $e SQA_CUDA_BACKEND=own timeout 150 ncu --clock-control none --kernel-name "regex:$k" --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --metrics "$m" \
    python3 bench/gpu/fwd_variants.py --lib /tmp/c/lib/libsqa.so --rounds 1 "$@" > /tmp/ncu.txt 2>&1
  { echo "=== $name"; grep -E "Duration|SM Frequency|DRAM Through|L2 Hit|Compute \(SM\)|dram__|lts__|pipe_xu|issue_active|stalled|^  [a-z_]*.*\(" /tmp/ncu.txt | head -30; } | tee -a $o/ncu-fwd.txt
}
f mha-raster8 flash_fwd_wgmma_tma SQA_CUDA_RASTER=8 --variants wgmmatma --configs d128-32k-mha
f gqa-32-8 flash_fwd_wgmma_tma X=1 --variants wgmmatma --configs d128-32k-gqa
f ssqa-16-16 flash_fwd_wgmma_tma X=1 --variants wgmmatma --configs d128-32k-ssqa
f cudnn-mha 'fprop|fmha|sdpa' X=1 --variants wgmmatma --configs d128-32k-mha
echo "== backward ncu (ours: the TMA dK/dV kernel; cuDNN bprop)"
bash bench/gpu/bwd_ncu.sh /tmp/c/lib/libsqa.so $o d128-8k-mha 2>&1 | tee $o/ncu-bwd-summary.txt | head -120
