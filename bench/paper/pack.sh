#!/usr/bin/env bash
# Packs a CUDA build's `sqa` and the non-system libraries it links (OpenBLAS, its Fortran
# runtime, OpenMP, the CUDA runtime) into a small .tgz for bench/paper/h200_run.sh, with any
# further executables of the build (e.g. tests/test_model_cuda) in bin/ beside it.
#   bench/paper/pack.sh BUILD_DIR OUT.tgz [BUILD_RELATIVE_EXECUTABLE...]
set -euo pipefail
build=${1:?usage: pack.sh BUILD_DIR OUT.tgz}
out=${2:?usage: pack.sh BUILD_DIR OUT.tgz}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/lib"
cp "$build/sqa" "$tmp/bin/"
for extra in "${@:3}"; do cp "$build/$extra" "$tmp/bin/"; done
for lib in libopenblas.so.0 libgomp.so.1 libgfortran.so.5 libquadmath.so.0 libcudart.so.13; do
  path=$(ldd "$build/sqa" | awk -v l="$lib" '$1 == l {print $3}')
  [ -n "$path" ] && cp -L "$path" "$tmp/lib/$lib"
done
bash "$(dirname "$0")/../build_commit.sh" "$build" >"$tmp/BUILD_COMMIT"
tar -C "$tmp" -czf "$out" BUILD_COMMIT bin lib
ls -la "$out"
