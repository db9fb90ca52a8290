#!/usr/bin/env bash
# Device call 1 of session 11 (2026-11-30): first GPU run of the deterministic scheme's TMA-producer
# backward (SQA_CUDA_BWD=wgmmatma, kDq = false; helper-built, emulator-checked in session 10):
# tests, compute-sanitizer, A/B against the cp.async kernel. Then the d128 forward question: why
# MHA 32/32 runs 10-17% below SQA 16/8 and xSQA 8/8 per FLOP (run 38): raster 8 / 16 heads at a
# time, and Nsight Compute on MHA vs xSQA non-causal.
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/t.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; } > $o/env.txt
echo "== tests" | tee $o/tests.txt
for t in 'CudaBackward.WgmmaTma*' 'CudaBackward.Deterministic*'; do
  s=$(date +%s); SQA_CUDA_BACKEND=own timeout 200 /tmp/c/bin/test_attention_cuda --gtest_brief=1 \
    --gtest_filter="$t" > /tmp/t.txt 2>&1; rc=$?
  { echo "=== $t rc=$rc $(( $(date +%s) - s ))s"; grep -vE "^Running main|^\[==========\]$" /tmp/t.txt | tail -15; } | tee -a $o/tests.txt
done
s=$(date +%s); SQA_CUDA_BWD=wgmmatma SQA_CUDA_BACKEND=own timeout 200 /tmp/c/bin/test_attention_cuda --gtest_brief=1 \
  --gtest_filter='CudaBackward.DeterministicSchemeMatchesReferenceAndRepeatsExactly' > /tmp/t.txt 2>&1; rc=$?
{ echo "=== Deterministic with SQA_CUDA_BWD=wgmmatma rc=$rc $(( $(date +%s) - s ))s"; tail -5 /tmp/t.txt; } | tee -a $o/tests.txt
echo "== sanitizers (SQA_CUDA_BWD=wgmmatma: both schemes on the TMA kernel)" | tee -a $o/tests.txt
for tool in memcheck racecheck synccheck; do
  SQA_CUDA_BWD=wgmmatma SQA_TEST_SCALE=small SQA_CUDA_BACKEND=own timeout 200 compute-sanitizer --tool $tool \
    --error-exitcode 9 /tmp/c/bin/test_attention_cuda --gtest_filter=CudaBackward.SanitizerSmoke --gtest_brief=1 > /tmp/san.txt 2>&1
  echo "$tool exit $? $(grep -E 'SUMMARY' /tmp/san.txt)" | tee -a $o/tests.txt
done
echo "== A/B deterministic: wgmma (cp.async) vs wgmmatma" | tee $o/ab.txt
PYTHONUNBUFFERED=1 timeout 240 python3 bench/gpu/bwd_variants.py --lib /tmp/c/lib/libsqa.so --deterministic \
  --variants wgmma,wgmmatma --configs d64-32k-mha-causal,d64-8k-mha,d128-32k-mha-causal,d128-8k-mha,d128-32k-sqa-causal \
  --json $o/ab-det.json 2>&1 | tee -a $o/ab.txt | tail -14
echo "== forward raster at d128 (default = all heads interleaved)" | tee -a $o/ab.txt
PYTHONUNBUFFERED=1 timeout 200 python3 bench/gpu/fwd_variants.py --lib /tmp/c/lib/libsqa.so \
  --variants wgmmatma,SQA_CUDA_RASTER=8,SQA_CUDA_RASTER=16 --configs d128-32k-mha,d128-32k-mha-causal,d128-32k-sqa,d128-32k-gqa,d128-32k-ssqa \
  --json $o/ab-fwd-raster.json 2>&1 | tee -a $o/ab.txt | tail -14
echo "== ncu forward d128 MHA vs xSQA non-causal" | tee $o/ncu.txt
m=dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_sector_hit_rate.pct,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active
m+=,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__cycles_elapsed.avg.per_second
for r in barrier long_scoreboard wait math_pipe_throttle membar sleeping mio_throttle short_scoreboard; do
  m+=,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio; done
for cfg in d128-32k-mha d128-32k-xsqa; do
  SQA_CUDA_BACKEND=own timeout 120 ncu --clock-control none --kernel-name regex:flash_fwd_wgmma_tma --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --metrics "$m" \
    python3 bench/gpu/fwd_variants.py --lib /tmp/c/lib/libsqa.so --variants wgmmatma --configs $cfg --rounds 1 > /tmp/ncu.txt 2>&1
  { echo "=== $cfg"; grep -E "Duration|SM Frequency|DRAM Through|Memory Through|L2 Hit|L1/TEX Hit|Compute \(SM\)|dram__|lts__|gmma|pipe_xu|issue_active|stalled" /tmp/ncu.txt | head -30; } | tee -a $o/ncu.txt
done
