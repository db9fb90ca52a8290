#!/usr/bin/env bash
# Prints the commit of the source tree a CMake build folder was configured from, as
# "<sha>[-dirty] <subject>" ("-dirty": the tree had uncommitted changes when this ran). The pack
# scripts store it as BUILD_COMMIT next to the binaries, so a result made on the GPU machine
# (which runs the scripts of whatever tree it was handed) names the code that actually ran.
#   bench/build_commit.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: build_commit.sh BUILD_DIR}
src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt")
[ -n "$src" ] || { echo "build_commit.sh: $build/CMakeCache.txt names no source folder" >&2; exit 1; }
sha=$(git -C "$src" rev-parse --short=12 HEAD)
dirty=$(git -C "$src" status --porcelain --untracked-files=no | head -1)
echo "$sha${dirty:+-dirty} $(git -C "$src" log -1 --format=%s | cut -c1-120) ($src)"
