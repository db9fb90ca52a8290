#!/usr/bin/env bash
# `sqa train`, `sqa eval` and `sqa generate` end to end on real English text (python3.11-doc):
# a run stopped half-way and resumed ends bit-identical to a straight run; a corrupt checkpoint
# stops --resume with a message naming the file and leaves the file as it was; eval and
# generate read the run folder. Usage: test_train_cli.sh path/to/sqa
set -euo pipefail
sqa=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
docs=/usr/share/doc/python3.11/html/tutorial
mkdir -p "$tmp/data"
if [ -d "$docs" ]; then
  cp "$docs"/controlflow.html "$docs"/datastructures.html "$docs"/introduction.html "$tmp/data/"
else
  echo "test_train_cli: $docs missing (install python3.11-doc)" >&2
  exit 1
fi
cat > "$tmp/config.json" <<'JSON'
{"name": "cli-test", "vocab_size": 400, "hidden_size": 32, "num_hidden_layers": 2,
 "num_attention_heads": 4, "attention_variant": "sqa", "intermediate_size": 64,
 "max_position_embeddings": 64}
JSON
common=(--config "$tmp/config.json" --data "$tmp/data" --steps 8 --batch 4 --context 32
        --lr 3e-3 --ckpt-every 2 --eval-every 4 --eval-batches 2 --ceiling-size 128 --quiet)
"$sqa" train "${common[@]}" --out "$tmp/straight" > "$tmp/straight.log"
"$sqa" train "${common[@]}" --out "$tmp/resumed" --tokenizer "$tmp/straight/tokenizer.json" \
  --stop-at 3 > "$tmp/first.log"
"$sqa" train "${common[@]}" --out "$tmp/resumed" --resume > "$tmp/second.log" 2>&1
grep -q "resumed from .* at step 3" "$tmp/second.log" || { cat "$tmp/second.log"; exit 1; }
cmp "$tmp/straight/model.safetensors" "$tmp/resumed/model.safetensors"
cmp "$tmp/straight/checkpoint.safetensors" "$tmp/resumed/checkpoint.safetensors"
for f in config.json tokenizer.json summary.json metrics.jsonl; do
  [ -s "$tmp/straight/$f" ] || { echo "missing $f" >&2; exit 1; }
done

# A truncated checkpoint: clear error naming the file; the file is left as it was.
cp -r "$tmp/straight" "$tmp/broken"
head -c 1000 "$tmp/straight/checkpoint.safetensors" > "$tmp/broken/checkpoint.safetensors"
cp "$tmp/broken/checkpoint.safetensors" "$tmp/broken.copy"
if "$sqa" train "${common[@]}" --out "$tmp/broken" --resume > "$tmp/broken.log" 2>&1; then
  echo "resume from a truncated checkpoint succeeded" >&2
  exit 1
fi
grep -q "checkpoint.safetensors" "$tmp/broken.log" || { cat "$tmp/broken.log"; exit 1; }
cmp "$tmp/broken/checkpoint.safetensors" "$tmp/broken.copy"

"$sqa" eval --model "$tmp/straight" --data "$tmp/data" --batch 4 --context 32 \
  --json "$tmp/eval.json" > "$tmp/eval.log"
python3 - "$tmp/eval.json" <<'PY'
import json, math, sys
r = json.load(open(sys.argv[1]))
assert math.isfinite(r["loss"]) and r["loss"] > 0, r
assert abs(r["perplexity"] - math.exp(r["loss"])) < 1e-6 * r["perplexity"], r
assert 0 <= r["accuracy"] <= 1 and r["tokens"] > 0, r
PY
out=$("$sqa" generate --model "$tmp/straight" --prompt "Python" --tokens 12 --seed 3 2>/dev/null)
again=$("$sqa" generate --model "$tmp/straight" --prompt "Python" --tokens 12 --seed 3 2>/dev/null)
[ "${out:0:6}" = "Python" ] || { echo "generate output: $out" >&2; exit 1; }
[ "$out" = "$again" ] || { echo "generate is not reproducible for a fixed seed" >&2; exit 1; }
echo "test_train_cli: ok"
