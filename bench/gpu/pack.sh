#!/usr/bin/env bash
# Packs a CUDA build made here into one folder that travels to the GPU machine (run.sh --carry):
# the test binary, libsqa.so and the non-system shared libraries they load.
#   bench/gpu/pack.sh [BUILD_DIR=build-cuda] [DEST=build-cuda-carry] [ARCHIVE.tgz]
set -euo pipefail
build=${1:-build-cuda}
dest=${2:-build-cuda-carry}
rm -rf "$dest"
mkdir -p "$dest/bin" "$dest/lib"
cp "$build/tests/test_attention_cuda" "$dest/bin/"
# The cuDNN backend's tests (libcudnn itself is not carried: the GPU machine's PyTorch has it).
if [ -f "$build/tests/test_cudnn_backend" ]; then cp "$build/tests/test_cudnn_backend" "$dest/bin/"; fi
# The transformer's CUDA tests (training steps through these kernels).
if [ -f "$build/tests/test_model_cuda" ]; then cp "$build/tests/test_model_cuda" "$dest/bin/"; fi
cp -L "$build/src/capi/libsqa.so" "$dest/lib/libsqa.so"
for so in $(ldd "$build/src/capi/libsqa.so" "$build/tests/test_attention_cuda" |
            awk '/=>/ {print $3}' | grep -E 'openblas|gfortran|quadmath|gomp|cudart' | sort -u); do
  cp -L "$so" "$dest/lib/"
done
bash "$(dirname "$0")/../build_commit.sh" "$build" >"$dest/BUILD_COMMIT"
# Optional third argument: also write ARCHIVE.tgz of the folder (run.sh --carry takes it).
if [ $# -ge 3 ]; then
  tar -C "$dest" -czf "$3" .
  du -sh "$3"
fi
du -sh "$dest"
