#!/usr/bin/env bash
# `sqa train`, `sqa eval` and `sqa generate` end to end on real English text (python3.11-doc):
# a run stopped half-way and resumed ends bit-identical to a straight run; a corrupt checkpoint
# stops --resume with a message naming the file and leaves the file as it was; eval and
# generate read the run folder; an encoder trains and evaluates with the masked-LM objective.
# Usage: test_train_cli.sh path/to/sqa
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

# An encoder trains with the masked-LM objective: its tokenizer gains "<mask>", a stopped and
# resumed run ends bit-identical, eval reports the masked-LM loss with fixed masks, generate
# refuses it, and bad settings name the value and the rule.
sed 's/"name": "cli-test",/"name": "cli-enc", "architecture": "encoder",/' "$tmp/config.json" \
  > "$tmp/encoder.json"
enc=(--config "$tmp/encoder.json" --data "$tmp/data" --steps 8 --batch 4 --context 32
     --lr 3e-3 --ckpt-every 2 --eval-every 4 --eval-batches 2 --ceiling-size 128 --quiet)
"$sqa" train "${enc[@]}" --out "$tmp/enc" > "$tmp/enc.log"
grep -q "objective: masked-LM" "$tmp/enc.log" || { cat "$tmp/enc.log"; exit 1; }
grep -q "val MLM loss" "$tmp/enc.log" || { cat "$tmp/enc.log"; exit 1; }
"$sqa" train "${enc[@]}" --out "$tmp/enc-resumed" --tokenizer "$tmp/enc/tokenizer.json" \
  --stop-at 3 > /dev/null
"$sqa" train "${enc[@]}" --out "$tmp/enc-resumed" --resume > "$tmp/enc-second.log" 2>&1
grep -q "resumed from .* at step 3" "$tmp/enc-second.log" || { cat "$tmp/enc-second.log"; exit 1; }
cmp "$tmp/enc/checkpoint.safetensors" "$tmp/enc-resumed/checkpoint.safetensors"
for seed in 0 1; do
  "$sqa" eval --model "$tmp/enc" --data "$tmp/data" --batch 4 --context 32 --mlm-seed $seed \
    --json "$tmp/enc-eval-$seed.json" > /dev/null
done
"$sqa" eval --model "$tmp/enc" --data "$tmp/data" --batch 4 --context 32 \
  --json "$tmp/enc-eval.json" > /dev/null
python3 - "$tmp/enc-eval.json" "$tmp/enc-eval-0.json" "$tmp/enc-eval-1.json" "$tmp/eval.json" <<'PY'
import json, math, sys
r, r0, r1, dec = (json.load(open(p)) for p in sys.argv[1:])
assert r["objective"] == "masked-lm" and r["mlm_probability"] == 0.15, r
assert math.isfinite(r["loss"]) and r["loss"] > 0, r
assert abs(r["perplexity"] - math.exp(r["loss"])) < 1e-6 * r["perplexity"], r
assert 0 <= r["accuracy"] <= 1, r
# about 15% of the positions are chosen; the default seed is 0 and fixed
assert 0.1 < r["tokens"] / dec["tokens"] < 0.2, (r["tokens"], dec["tokens"])
assert r["loss"] == r0["loss"] and r["tokens"] == r0["tokens"], (r, r0)
assert r1["tokens"] != r["tokens"] or r1["loss"] != r["loss"], (r, r1)
assert "objective" not in dec, dec
PY
expect_error() {  # expect_error LOGNAME FRAGMENT... -- COMMAND...
  local log="$tmp/$1.log"; shift
  local fragments=()
  while [ "$1" != "--" ]; do fragments+=("$1"); shift; done
  shift
  if "$@" > "$log" 2>&1; then echo "expected an error from: $*" >&2; exit 1; fi
  for f in "${fragments[@]}"; do
    grep -qF -- "$f" "$log" || { echo "'$f' not in:" >&2; cat "$log" >&2; exit 1; }
  done
}
expect_error gen-enc "needs a decoder" -- \
  "$sqa" generate --model "$tmp/enc" --prompt "Python" --tokens 4
expect_error p0 "--mlm-probability (0)" "(0, 1)" -- \
  "$sqa" train "${enc[@]}" --out "$tmp/bad" --mlm-probability 0
expect_error p15 "--mlm-probability (1.5)" "(0, 1)" -- \
  "$sqa" train "${enc[@]}" --out "$tmp/bad" --mlm-probability 1.5
expect_error nomask '"<mask>"' "masked-LM" "straight/tokenizer.json" -- \
  "$sqa" train "${enc[@]}" --out "$tmp/bad" --tokenizer "$tmp/straight/tokenizer.json"
expect_error decoder-mlm "--mlm-probability" "decoder" -- \
  "$sqa" train "${common[@]}" --out "$tmp/bad" --mlm-probability 0.2
expect_error eval-nomask '"<mask>"' -- \
  "$sqa" eval --model "$tmp/enc" --data "$tmp/data" --tokenizer "$tmp/straight/tokenizer.json"

# A token shard with the tokenizer that made it: the run folder gets the tokenizer, so generate
# works from it; a tokenizer of another vocabulary size is refused before anything is written
# (the shard records only the size, so two tokenizers of one size cannot be told apart).
data_tool="$(dirname "$sqa")/sqa-data"
if [ -x "$data_tool" ]; then
  "$data_tool" tokenize --tokenizer "$tmp/straight/tokenizer.json" --data "$tmp/data" \
    --out "$tmp/docs.tok" > /dev/null
  "$sqa" train --config "$tmp/config.json" --data "$tmp/docs.tok" --steps 2 --batch 4 \
    --context 32 --ceiling-size 128 --quiet --tokenizer "$tmp/straight/tokenizer.json" \
    --out "$tmp/from-shard" > /dev/null
  cmp "$tmp/straight/tokenizer.json" "$tmp/from-shard/tokenizer.json"
  "$sqa" generate --model "$tmp/from-shard" --prompt "Python" --tokens 4 > /dev/null 2>&1
  "$data_tool" tokenizer --data "$tmp/data" --vocab 300 --out "$tmp/tok300.json" > /dev/null
  expect_error shard-tok "did not make the token shard" "tok300.json" "vocabulary 300" -- \
    "$sqa" train --config "$tmp/config.json" --data "$tmp/docs.tok" --steps 2 --batch 4 \
    --context 32 --quiet --tokenizer "$tmp/tok300.json" --out "$tmp/bad-shard"
  [ ! -e "$tmp/bad-shard/tokenizer.json" ] || { echo "refused run wrote a tokenizer" >&2; exit 1; }
fi
echo "test_train_cli: ok"
