#!/usr/bin/env bash
# The first H200 call for branch gpu-wgmma-small (docs/dev/cuda-notes.md, "Ready for the next
# device session"): every wgmma forward test, then two A/Bs against SDPA with an Nsight Compute
# profile each (bench/gpu/fwd_ab.sh):
#   small: d16 / d32, wgmma and wgmma2 against the current defaults sum2occq / sum2;
#   large: d64 / d128, wgmmapp and wgmma2 against wgmma (the default there).
#   bench/gpu/wgmma_next.sh CARRY.tgz
# CARRY.tgz: bench/paper/pack.sh BUILD OUT.tgz tests/test_attention_cuda src/capi/libsqa.so
# $OUT/small and $OUT/large receive fwd_ab.sh's files. About 6-8 minutes.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
carry=${1:?usage: wgmma_next.sh CARRY.tgz}
base=${OUT:-bench/results/h200-wgmma-next-$(date -u +%Y%m%dT%H%M%S)}
TEST_FILTER='CudaForward.Wgmma*:CudaForward.EveryKernelVariantMatchesReference:CudaValidation.*' \
  TEST_TIMEOUT=240 AB_TIMEOUT=120 PROFILE_CONFIG=d32-32k-mha-causal \
  CONFIGS=d16-32k-mha-causal,d16-32k-xsqa-causal,d32-32k-mha-causal,d32-32k-xsqa-causal,d16-200k-mha \
  OUT=$base/small bash bench/gpu/fwd_ab.sh "$carry" sum2occq,sum2,wgmma,wgmma2 wgmma,wgmma2
# The tests ran above ('-*' runs none here).
TEST_FILTER='-*' AB_TIMEOUT=120 PROFILE_CONFIG=d128-32k-mha-causal \
  CONFIGS=d64-32k-mha,d64-32k-mha-causal,d64-32k-xsqa-causal,d128-32k-mha,d128-32k-mha-causal,d128-32k-xsqa-causal \
  OUT=$base/large bash bench/gpu/fwd_ab.sh "$carry" wgmma,wgmmapp,wgmma2 wgmmapp
