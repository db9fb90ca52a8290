#!/usr/bin/env bash
# Builds the demo corpus from the Python documentation (Debian package python3.11-doc, installed
# by scripts/setup.sh): every rendered HTML page as plain text, pages separated by
# <|endoftext|>, written to data/python-docs.txt (about 9.6 MB, 494 pages). Optionally trains a
# byte-level BPE tokenizer on it and pre-tokenizes it into a shard.
#
#   scripts/corpus.sh [BUILD_DIR] [VOCAB]     e.g. scripts/corpus.sh build 5000
# writes data/python-docs.txt, and with VOCAB also data/tokenizer-VOCAB.json and
# data/python-docs-VOCAB.tok.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
vocab=${2:-}
case "$build" in /*) ;; *) build="$root/$build" ;; esac
tool="$build/sqa-data"
html=${SQA_TEXT_DIR:-/usr/share/doc/python3.11/html}
if [ ! -d "$html" ]; then
  echo "corpus: $html not found; install the Debian package python3.11-doc (scripts/setup.sh)" >&2
  exit 1
fi
if [ ! -x "$tool" ]; then
  cmake -S "$root" -B "$build" -G Ninja >/dev/null
  ninja -C "$build" sqa_data_cli >/dev/null
fi
mkdir -p "$root/data"
"$tool" corpus --html "$html" --out "$root/data/python-docs.txt"
if [ -n "$vocab" ]; then
  "$tool" tokenizer --data "$root/data/python-docs.txt" --vocab "$vocab" \
    --out "$root/data/tokenizer-$vocab.json"
  "$tool" tokenize --tokenizer "$root/data/tokenizer-$vocab.json" \
    --data "$root/data/python-docs.txt" --out "$root/data/python-docs-$vocab.tok"
fi
