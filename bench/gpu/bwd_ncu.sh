#!/usr/bin/env bash
# Nsight Compute on the backward: our wgmma dK/dV kernel and cuDNN's fused bprop kernel (through
# PyTorch SDPA) on the same problem, one launch each, with the pipe, issue and stall metrics.
#   [BWD_VARIANT=wgmmatma] bench/gpu/bwd_ncu.sh LIB OUT [CONFIG=d128-8k-mha]
set -uo pipefail
lib=${1:?libsqa.so}
out=${2:?out dir}
cfg=${3:-d128-8k-mha}
metrics=sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
metrics+=,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active
metrics+=,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active
metrics+=,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active
metrics+=,smsp__issue_active.avg.pct_of_peak_sustained_active
metrics+=,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum
metrics+=,sm__cycles_elapsed.avg.per_second
for r in barrier short_scoreboard long_scoreboard math_pipe_throttle mio_throttle wait \
  not_selected dispatch_stall no_instruction branch_resolving lg_throttle membar sleeping; do
  metrics+=,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio
done
for k in 'flash_bwd_dkdv_wgmma' 'flash_bprop'; do
  echo "== ncu $k"
  SQA_CUDA_BACKEND=own timeout 150 ncu --clock-control none --kernel-name "regex:$k" --launch-count 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats \
    --section SchedulerStats --section Occupancy --section MemoryWorkloadAnalysis --metrics "$metrics" \
    python3 bench/gpu/bwd_variants.py --lib "$lib" --variants "${BWD_VARIANT:-wgmmatma}" --configs "$cfg" --rounds 1 \
    >"$out/ncu-$k.txt" 2>&1
  grep -E "Duration|SM Frequency|Issue Slots|Executed Ipc|pipe_|stalled|Achieved Occupancy|Registers|Block Size|Grid Size|Shared Memory Config|Throughput|bank_conflicts|No Eligible" \
    "$out/ncu-$k.txt" | head -50
done
