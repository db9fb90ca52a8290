#!/usr/bin/env bash
# A short H200 check of the CUDA model's speed (issue 4) with its in-run PyTorch peer: the
# model tests, `sqa bench model` (training step at 1024 x 128 for every dense paper variant,
# forward at 200k tokens for MHA and xSQA), bench/torch_reference.py for the same (training
# with torch.compile, forward eager) on VARIANTS, and an Nsight Compute per-kernel profile of
# one xSQA training step. Fits one device command (about 4 minutes).
#   bench/gpu/model_speed.sh CARRY.tgz [VARIANTS=mha,xsqa]
# Environment: OURS (space-separated dense variants for the training bench, default all seven),
# FWD (variants for the 200k forward, default "mha xsqa"), FWD_PEERS (PyTorch names for the
# 200k forward peer, default VARIANTS), TORCH=0 skips the PyTorch peer, TORCH_TIMEOUT (seconds
# for the torch.compile bench, default 150), PROFILE=0 skips the Nsight Compute profile,
# TESTS=0 the tests.
# CARRY.tgz: bench/paper/pack.sh BUILD OUT.tgz tests/test_model_cuda tests/test_attention_cuda.
# $OUT receives env.txt, tests.txt, ours.txt, torch.txt and speed-json.tgz (every JSON, the
# ncu CSV and its kernel table kernels-xsqa.md).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
carry=${1:?usage: model_speed.sh CARRY.tgz [VARIANTS]}
peers=${2:-mha,xsqa}
source bench/paper/h200_env.sh "$carry" speed
json=/tmp/sqa-speed-json
mkdir -p $json

echo "== tests" | tee "$out/tests.txt"
[ "${TESTS:-1}" = 0 ] || timeout 150 /tmp/sqa-h200/bin/test_model_cuda 2>&1 | grep -E '^\[ *(OK|FAILED|PASSED) *\]|Failure|error' |
  tee -a "$out/tests.txt"
if [ "${TESTS:-1}" != 0 ] && [ -x /tmp/sqa-h200/bin/test_attention_cuda ]; then
  timeout 120 /tmp/sqa-h200/bin/test_attention_cuda --gtest_filter='*Backward*' 2>&1 |
    grep -E '^\[ *(OK|FAILED|PASSED) *\]|Failure|error' | tee -a "$out/tests.txt"
fi

echo "== ours: sqa bench model" | tee "$out/ours.txt"
for v in ${OURS:-mha gqa mqa sqa ssqa xsqa swsqa}; do
  timeout 60 $sqa bench model --config configs/paper/dense-$v.json --device cuda --batch 128 \
    --seq 1024 --train --warmup 2 --iters 5 --json $json/train-$v.json 2>&1 | tee -a "$out/ours.txt"
done
for v in ${FWD:-mha xsqa}; do
  timeout 60 $sqa bench model --config configs/paper/dense-$v.json --device cuda --batch 1 \
    --seq 200000 --warmup 1 --iters 3 --json $json/fwd200k-$v.json 2>&1 | tee -a "$out/ours.txt"
done

echo "== torch: training step with torch.compile, eager forward at 200k" | tee "$out/torch.txt"
[ "${TORCH:-1}" = 0 ] || timeout ${TORCH_TIMEOUT:-150} python3 bench/torch_reference.py bench --quick --variants "$peers" \
  --train-sizes 1024x128 --kinds train_compile --out $json/torch-compile.json 2>&1 |
  tee -a "$out/torch.txt"
[ "${TORCH:-1}" = 0 ] || timeout 120 python3 bench/torch_reference.py bench --quick \
  --variants "${FWD_PEERS:-$peers}" --sizes 200000x1 --kinds forward --out $json/torch-forward.json 2>&1 | tee -a "$out/torch.txt"

echo "== profile: one xSQA training step"
[ "${PROFILE:-1}" = 0 ] || timeout 90 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
  $sqa bench model --config configs/paper/dense-xsqa.json --device cuda --batch 128 --seq 1024 \
  --train --warmup 0 --iters 1 >$json/ncu-xsqa.csv 2>/dev/null
if [ -s $json/ncu-xsqa.csv ]; then
  python3 bench/gpu/kernel_times.py $json/ncu-xsqa.csv --from-launch embed_forward:2 \
    --json $json/kernels-xsqa.json >$json/kernels-xsqa.md
  head -14 $json/kernels-xsqa.md
fi
tar -C $json -czf "$out/speed-json.tgz" .
echo "== done" | tee -a "$out/env.txt"
