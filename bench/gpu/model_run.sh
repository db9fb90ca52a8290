#!/usr/bin/env bash
# The H200 run of the CUDA model (issue 4): CPU-GPU agreement tests, a `sqa train/eval
# --device cuda` round trip with a cross-device checkpoint, then `sqa bench model` for the
# paper's dense variants against the PyTorch reference (bench/torch_reference.py bench) in the
# same run. Everything goes to $OUT.
#   bench/gpu/model_run.sh CARRY.tgz [--no-torch-compile]
# CARRY.tgz holds bin/sqa, bin/test_model_cuda and the non-system libraries (openblas, gomp,
# cudart); cuBLAS and cuDNN come from the machine's PyTorch wheels.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
carry=$1
compile=1
[ "${2:-}" = "--no-torch-compile" ] && compile=0
out=${OUT:-bench/results/model-run-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$out" /tmp/sqa-model
tar -C /tmp/sqa-model -xzf "$carry"
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
libdirs=$(find "$site/nvidia" \( -name 'libcublas*.so.13' -o -name 'libcudnn.so.9' \) -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH=/tmp/sqa-model/lib:${libdirs}${LD_LIBRARY_PATH:-}
sqa=/tmp/sqa-model/bin/sqa
{
  date -u
  git log -1 --format='commit %H %s' 2>/dev/null || true
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv
  ldd $sqa | grep -E 'not found|cublas|cudnn|cudart'
} 2>&1 | tee "$out/env.txt"

echo "== tests" | tee "$out/tests.txt"
timeout 120 /tmp/sqa-model/bin/test_model_cuda 2>&1 | tee -a "$out/tests.txt"

echo "== cli: train --device cuda, eval on cuda and on cpu (same checkpoint)" | tee "$out/cli.txt"
cli=/tmp/sqa-model/cli
mkdir -p $cli
cat > $cli/tiny.json <<'J'
{"model_type": "sqa", "name": "tiny-sqa", "vocab_size": 512, "hidden_size": 64,
 "num_hidden_layers": 2, "num_attention_heads": 8, "head_dim": 16, "attention_variant": "sqa",
 "intermediate_size": 128, "max_position_embeddings": 128}
J
timeout 120 $sqa train --config $cli/tiny.json --data docs --split-docs paragraph --out $cli/run \
  --steps 40 --batch 8 --context 64 --lr 3e-3 --device cuda --log-every 10 2>&1 | tee -a "$out/cli.txt"
timeout 60 $sqa eval --model $cli/run --data docs --split-docs paragraph --context 64 --device cuda 2>&1 | tee -a "$out/cli.txt"
timeout 60 $sqa eval --model $cli/run --data docs --split-docs paragraph --context 64 --device cpu 2>&1 | tee -a "$out/cli.txt"
timeout 60 $sqa train --config $cli/tiny.json --data docs --split-docs paragraph --out $cli/run \
  --steps 60 --batch 8 --context 64 --lr 3e-3 --device cpu --resume --log-every 10 2>&1 | tail -4 | tee -a "$out/cli.txt"
timeout 60 $sqa generate --model $cli/run --prompt "The model" --tokens 20 --device cuda 2>&1 | tee -a "$out/cli.txt"

echo "== ours: sqa bench model" | tee "$out/ours.txt"
mkdir -p "$out/ours"
for v in mha gqa mqa sqa ssqa xsqa swsqa; do
  timeout 60 $sqa bench model --config configs/paper/dense-$v.json --device cuda --batch 128 \
    --seq 1024 --train --warmup 2 --iters 5 --json "$out/ours/train-$v.json" 2>&1 | tee -a "$out/ours.txt"
done
for v in mha xsqa sqa gqa; do
  timeout 60 $sqa bench model --config configs/paper/dense-$v.json --device cuda --batch 1 \
    --seq 200000 --warmup 1 --iters 3 --json "$out/ours/fwd200k-$v.json" 2>&1 | tee -a "$out/ours.txt"
done

echo "== torch: eager training step and forward" | tee "$out/torch.txt"
timeout 200 python3 bench/torch_reference.py bench --quick --variants mha,gqa,mqa,sqa,ssqa,xsqa,sw-sqa \
  --sizes 200000x1 --train-sizes 1024x128 --kinds forward,train_eager \
  --out "$out/torch-eager.json" 2>&1 | tee -a "$out/torch.txt"
if [ $compile = 1 ]; then
  echo "== torch: compiled training step" | tee -a "$out/torch.txt"
  timeout 240 python3 bench/torch_reference.py bench --quick --variants mha,sqa,xsqa,gqa,mqa,ssqa \
    --train-sizes 1024x128 --kinds train_compile --out "$out/torch-compile.json" 2>&1 | tee -a "$out/torch.txt"
fi
echo "== done" | tee -a "$out/torch.txt"
