#!/usr/bin/env bash
# Sourced by the bench/paper/h200_*.sh device scripts: unpacks CARRY.tgz (bench/paper/pack.sh)
# into /tmp/sqa-h200 and points the loader at its libraries and at the cuBLAS/cuDNN of the
# machine's PyTorch wheels. Sets $sqa (the binary) and $out (the results folder, $OUT there).
#   source bench/paper/h200_env.sh CARRY.tgz NAME
carry=${1:?usage: source h200_env.sh CARRY.tgz NAME}
out=${OUT:-bench/results/h200-$2-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$out" /tmp/sqa-h200
rm -f /tmp/sqa-h200/BUILD_COMMIT  # an older pack may not have one
tar -C /tmp/sqa-h200 -xzf "$carry"
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
libdirs=$(find "$site/nvidia" \( -name 'libcublas*.so.13' -o -name 'libcudnn.so.9' \) \
  -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH=/tmp/sqa-h200/lib:${libdirs}${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
sqa=/tmp/sqa-h200/bin/sqa
# The carried build's commit (pack.sh); the script tree's commit below may differ from it.
if [ -f /tmp/sqa-h200/BUILD_COMMIT ]; then
  SQA_COMMIT=$(cut -d' ' -f1 /tmp/sqa-h200/BUILD_COMMIT)
  export SQA_COMMIT
fi
{
  date -u
  [ -f /tmp/sqa-h200/BUILD_COMMIT ] && echo "build $(cat /tmp/sqa-h200/BUILD_COMMIT)"
  git log -1 --format='scripts commit %H %s' 2>/dev/null || true
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version())'
  ldd $sqa | grep -E 'not found|cublas|cudnn|cudart'
} 2>&1 | tee "$out/env.txt"
