#!/usr/bin/env bash
# One H200 command for issues 4 and 5: (1) our model against the PyTorch reference
# (bench/torch_reference.py compare) — CPU fp32 dumps and GPU bf16 dumps — on paper configs, and
# (2) Table 3: the whole dense model at the paper's sizes, sqa (bench/paper/table3_sqa.py) and
# the PyTorch reference (eager, SDPA) in the same run. Everything goes to $OUT.
#
#   bench/paper/h200_run.sh CARRY.tgz [compare|table3|all|table3train]
#
# CARRY.tgz (bench/paper/pack.sh) holds bin/sqa and the non-system libraries it needs; cuBLAS
# and cuDNN come from the machine's PyTorch wheels or system. Each part is time-boxed so the
# whole command fits the device's 10-minute limit.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
carry=${1:?usage: h200_run.sh CARRY.tgz [compare|table3|all|table3train]}
part=${2:-all}
source bench/paper/h200_env.sh "$carry" run

if [ "$part" = compare ] || [ "$part" = all ]; then
  echo "== compare: our logits and first-step gradients vs bench/torch_reference.py" | tee "$out/compare.txt"
  for cfg in dense-sqa dense-xsqa dense-swsqa dense-mha moe-gqa; do
    c=/tmp/case-$cfg
    timeout 60 python3 bench/torch_reference.py make-case --config configs/paper/$cfg.json \
      --out $c --batch 2 --seqlen 64 --mask > /dev/null 2>&1 || { echo "$cfg: make-case failed" | tee -a "$out/compare.txt"; continue; }
    devices="cpu"
    case $cfg in dense-*) devices="cpu cuda" ;; esac  # MoE bf16 can flip near-tie routes
    for dev in $devices; do
      echo "-- $cfg, our $dev model" | tee -a "$out/compare.txt"
      timeout 60 $sqa dump --config $c/config.json --weights $c/weights.safetensors \
        --batch $c/batch.safetensors --out $c/ours-$dev.safetensors --device $dev 2>&1 | tee -a "$out/compare.txt"
      timeout 90 python3 bench/torch_reference.py compare --config $c/config.json \
        --weights $c/weights.safetensors --dump $c/ours-$dev.safetensors --batch $c/batch.safetensors \
        --json "$out/compare-$cfg-$dev.json" 2>&1 | tail -6 | tee -a "$out/compare.txt"
    done
  done
fi

if [ "$part" = table3 ] || [ "$part" = all ]; then
  echo "== table 3, sqa" | tee "$out/table3.txt"
  timeout 180 python3 bench/paper/table3_sqa.py --sqa $sqa --out "$out/table3-sqa.json" \
    --variants xsqa,sqa,ssqa,swsqa,mqa,gqa,mha --warmup 2 --iters 3 2>&1 | tee -a "$out/table3.txt"
  echo "== table 3, PyTorch reference (eager, SDPA / flex for the window)" | tee -a "$out/table3.txt"
  timeout 200 python3 bench/torch_reference.py bench --variants xsqa,sqa,ssqa,sw-sqa,mqa,gqa,mha \
    --kinds forward,train_eager --train-sizes 1024x128 --iters 5 \
    --out "$out/table3-torch.json" 2>&1 | tee -a "$out/table3.txt"
fi

# Table 3's training-step columns at the paper's other four sizes (1024 x 128 is in `table3`);
# a command of its own: PyTorch's eager step at 200k tokens takes seconds per variant.
if [ "$part" = table3train ]; then
  sizes=4096x32,32768x4,131072x1,200000x1
  echo "== table 3 training steps, sqa" | tee "$out/table3train.txt"
  timeout 200 python3 bench/paper/table3_sqa.py --sqa $sqa --out "$out/table3-sqa-train.json" \
    --variants xsqa,sqa,ssqa,swsqa,mqa,gqa,mha --sizes "" --train-sizes $sizes --warmup 1 \
    --iters 3 2>&1 | tee -a "$out/table3train.txt"
  echo "== table 3 training steps, PyTorch reference (eager)" | tee -a "$out/table3train.txt"
  timeout 330 python3 bench/torch_reference.py bench --variants xsqa,sqa,ssqa,sw-sqa,mqa,gqa,mha \
    --kinds train_eager --train-sizes $sizes --iters 3 --out "$out/table3-torch-train.json" 2>&1 |
    tee -a "$out/table3train.txt"
fi
echo "== done" | tee -a "$out/env.txt"
