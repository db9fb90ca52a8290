#!/usr/bin/env bash
# One H200 call for the small-head-dim forward work (issue 3): the attention correctness sweep,
# the A/B of the forward variants against SDPA (bench/gpu/fwd_variants.py), and an Nsight
# Compute profile of one forward launch per variant in PROFILE (pipe utilisation, issue
# activity, warp stall reasons, occupancy).
#   bench/gpu/fwd_ab.sh CARRY.tgz [VARIANTS=sum2occq,sum2occ,sum2] [PROFILE=sum2occ]
# Environment: TEST_FILTER (gtest filter), CONFIGS (fwd_variants.py configs), PROFILE_CONFIG
# (the config ncu profiles, default d16-32k-mha-causal), TEST_TIMEOUT, AB_TIMEOUT.
# CARRY.tgz: bench/paper/pack.sh BUILD OUT.tgz tests/test_attention_cuda src/capi/libsqa.so
# $OUT receives env.txt, tests.txt (tail; every failure in tests-full.txt), ab.txt, ab.json,
# ncu-VARIANT.txt.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
carry=${1:?usage: fwd_ab.sh CARRY.tgz [VARIANTS] [PROFILE]}
variants=${2:-sum2occq,sum2occ,sum2}
profile=${3:-sum2occ}
source bench/paper/h200_env.sh "$carry" fwd-ab
lib=/tmp/sqa-h200/bin/libsqa.so

echo "== tests" | tee "$out/tests.txt"
SQA_CUDA_BACKEND=own timeout ${TEST_TIMEOUT:-150} /tmp/sqa-h200/bin/test_attention_cuda \
  --gtest_brief=1 ${TEST_FILTER:+--gtest_filter="$TEST_FILTER"} 2>&1 | tee "$out/tests-full.txt" |
  tail -8 | tee -a "$out/tests.txt"

echo "== A/B"
timeout ${AB_TIMEOUT:-300} python3 bench/gpu/fwd_variants.py --lib $lib --variants "$variants" \
  ${CONFIGS:+--configs "$CONFIGS"} --json "$out/ab.json" 2>&1 | tee "$out/ab.txt"

metrics=sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active
metrics+=,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
metrics+=,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active
metrics+=,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active
metrics+=,sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active
metrics+=,sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active
metrics+=,smsp__issue_active.avg.pct_of_peak_sustained_active
metrics+=,sm__cycles_elapsed.avg.per_second
# Warp stall reasons, cycles per issued instruction (short_scoreboard: MUFU/shared results;
# math_pipe_throttle: a busy pipe; wait: fixed-latency dependencies; barrier: __syncthreads).
stalls=""
for r in barrier short_scoreboard long_scoreboard math_pipe_throttle mio_throttle wait \
  not_selected dispatch_stall no_instruction branch_resolving lg_throttle; do
  stalls+=,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio
done
profile_one() {  # variant, metric list
  timeout 120 ncu --kernel-name 'regex:flash_fwd_(wgmma_(small_)?)?kernel' --launch-count 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats \
    --section SchedulerStats --section Occupancy --section InstructionStats --metrics "$2" \
    python3 bench/gpu/fwd_variants.py --lib $lib --variants "$1" \
    --configs "${PROFILE_CONFIG:-d16-32k-mha-causal}" \
    --rounds 1 >"$out/ncu-$1.txt" 2>&1
}
for v in ${profile//,/ }; do
  echo "== ncu $v"
  # Without the stall metrics if this ncu does not know one of them.
  profile_one "$v" "$metrics$stalls" || grep -q "Duration" "$out/ncu-$v.txt" ||
    profile_one "$v" "$metrics"
  grep -E "Duration|SM Frequency|Issue Slots|Executed Ipc|pipe|stalled|Achieved Occupancy|Registers|One or More|No Eligible" \
    "$out/ncu-$v.txt" | head -40
done
nvidia-smi -q -d PERFORMANCE,CLOCK >>"$out/env.txt" 2>&1
echo "== done"
