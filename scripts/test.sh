#!/usr/bin/env bash
# The test command: installs dependencies, checks clang-format, builds Release (with the CUDA code compiled and
# linked when nvcc is present) and an ASan+UBSan build, then runs every test: GoogleTest via
# ctest on both builds, and pytest through the installed Python package.
set -euo pipefail
# Idle OpenMP/OpenBLAS workers sleep instead of spinning, so parallel ctest jobs do not starve each other.
export OMP_WAIT_POLICY=passive
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh

echo "== clang-format (style.md: every C, C++ and CUDA file formatted)"
if git rev-parse --git-dir >/dev/null 2>&1; then
  git ls-files '*.c' '*.h' '*.cpp' '*.hpp' '*.cu' '*.cuh' | xargs clang-format --dry-run -Werror
fi

echo "== Release build"
bash scripts/build.sh build
echo "== Release tests"
ctest --test-dir build --output-on-failure -j "$(nproc)"

echo "== ASan + UBSan build (CPU only)"
bash scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSQA_SANITIZE=ON -DSQA_CUDA=OFF
echo "== ASan + UBSan tests"
SQA_TEST_SCALE=small ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j "$(nproc)"

if [ -f python/pyproject.toml ]; then
  echo "== Python package"
  python3 -m pip install -q --disable-pip-version-check ./python
  python3 -m pytest -q python/tests
fi
