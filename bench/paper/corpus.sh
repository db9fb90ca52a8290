#!/usr/bin/env bash
# The English corpus of the GPU quality runs (Tables 1 and 2, issue 5): the rendered HTML of two
# Debian documentation packages as plain text, python3.11-doc (9.6 MB, 494 pages) then
# linux-doc-6.1 without its translations/ (30.5 MB, 2,841 pages), pages separated by
# <|endoftext|>; a byte-level BPE tokenizer trained on it at VOCAB; the pre-tokenized shard that
# travels to the GPU machine. With VOCAB 10000: 11.2M tokens (10.65M train, 0.56M validation).
#
#   apt-get install python3.11-doc linux-doc-6.1
#   bench/paper/corpus.sh BUILD_DIR VOCAB
# writes data/english-docs.txt, data/tokenizer-VOCAB.json, data/english-docs-VOCAB.tok.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:?usage: corpus.sh BUILD_DIR VOCAB}
vocab=${2:?usage: corpus.sh BUILD_DIR VOCAB}
tool="$build/sqa-data"
python_html=/usr/share/doc/python3.11/html
linux_html=/usr/share/doc/linux-doc-6.1/html
for d in "$python_html" "$linux_html"; do
  [ -d "$d" ] || { echo "corpus: $d not found; apt-get install python3.11-doc linux-doc-6.1" >&2; exit 1; }
done
mkdir -p "$root/data"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$tool" corpus --html "$python_html" --out "$tmp/python.txt"
"$tool" corpus --html "$linux_html" --exclude translations --out "$tmp/linux.txt"
# One separator between the two packages, as between pages (the first's trailing newlines go).
python3 -c 'import sys; a, b, out = sys.argv[1:]; open(out, "w").write(
    open(a).read().rstrip("\n") + "\n<|endoftext|>\n" + open(b).read())' \
  "$tmp/python.txt" "$tmp/linux.txt" "$root/data/english-docs.txt"
"$tool" tokenizer --data "$root/data/english-docs.txt" --vocab "$vocab" \
  --out "$root/data/tokenizer-$vocab.json"
"$tool" tokenize --tokenizer "$root/data/tokenizer-$vocab.json" \
  --data "$root/data/english-docs.txt" --out "$root/data/english-docs-$vocab.tok"
