#!/usr/bin/env bash
# Installs what sqa needs on a fresh Debian 12 machine (root or sudo): compilers and CMake,
# OpenBLAS, GoogleTest, nlohmann-json, the Python test tools, and python3.11-doc, whose HTML
# pages are the real English text used by the demos and tests. Safe to re-run.
set -euo pipefail
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
pkgs=(build-essential cmake ninja-build libopenblas-dev libgtest-dev nlohmann-json3-dev
      python3.11-doc clang-format)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check numpy ml_dtypes pytest scikit-build-core safetensors tokenizers
