#!/usr/bin/env bash
# The main job: on a fresh Debian 12 machine, installs what sqa needs, builds it, extracts real
# English text from the python3.11-doc package (the HTML of the Python documentation: tutorial,
# HOWTOs, FAQ, language reference), then trains a small SQA model and its MHA twin on the CPU
# and prints their loss and throughput side by side. The two training runs take under 3
# minutes together on a 2-core machine.
#
# Environment: SQA_MAIN_STEPS (default 200) optimizer steps per model; SQA_MAIN_BUILD (default
# build) the build folder; SQA_MAIN_SKIP_BUILD=1 skips setup and build (development);
# SQA_MAIN_OUT (default $SQA_MAIN_BUILD/main-job) the run folder. Measured on the 2-core dev VM:
# see README.md for the latest timing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${SQA_MAIN_BUILD:-build}
out=${SQA_MAIN_OUT:-$build/main-job}
steps=${SQA_MAIN_STEPS:-200}

if [ "${SQA_MAIN_SKIP_BUILD:-0}" != 1 ]; then  # 1: reuse an existing build (development)
  bash scripts/setup.sh
  bash scripts/build.sh "$build"
fi
sqa="$build/sqa"

# Real English text: HTML pages of python3.11-doc, read by sqa's HTML-to-text loader.
docs=/usr/share/doc/python3.11/html
[ -d "$docs/tutorial" ] || { echo "main: $docs missing; install python3.11-doc" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out/corpus"
for part in tutorial howto faq reference; do cp -r "$docs/$part" "$out/corpus/"; done
echo "== corpus: $(find "$out/corpus" -name '*.html' | wc -l) HTML pages from python3.11-doc"

# Same data, tokenizer, seed, schedule and batch for both; only the attention heads differ
# (configs/demo: 4 layers, d_model 128, H 8, d_head 16; SQA H_q=4 H_kv=2 vs MHA 8/8). Context
# 1024 so that attention, the part SQA shrinks, is about half of the FLOPs, as in prefill.
common=(--data "$out/corpus" --steps "$steps" --batch 1 --context 1024 --lr 2e-3
        --schedule warmup-cosine --warmup 0.1 --seed 1234 --eval-every "$steps"
        --eval-batches 16 --ckpt-every "$steps" --log-every $((steps / 6 > 0 ? steps / 6 : 1)))
start=$(date +%s)
echo "== training SQA (configs/demo/sqa.json)"
"$sqa" train --config configs/demo/sqa.json --out "$out/sqa" "${common[@]}"
echo "== training MHA (configs/demo/mha.json), same tokenizer"
"$sqa" train --config configs/demo/mha.json --out "$out/mha" \
  --tokenizer "$out/sqa/tokenizer.json" "${common[@]}"
elapsed=$(( $(date +%s) - start ))

echo "== sample from the SQA model"
"$sqa" generate --model "$out/sqa" --prompt "In Python, a list" --tokens 40 --seed 1 \
  --temperature 0.8 2>/dev/null | cat -s || true

echo
python3 - "$out" "$elapsed" <<'EOF'
import json, sys
out, elapsed = sys.argv[1], int(sys.argv[2])
rows = []
for name in ("sqa", "mha"):
    s = json.load(open(f"{out}/{name}/summary.json"))
    c = json.load(open(f"{out}/{name}/config.json"))
    l0 = c["layer_types"][0]
    rows.append((name.upper(), l0["num_query_heads"], l0["num_key_value_heads"], s))
hdr = ("model", "H_q", "H_kv", "params", "train loss*", "val loss", "val ppl", "val acc",
       "tok/s", "MFU", "train s")
print("%-5s %4s %5s %9s %11s %9s %8s %8s %8s %6s %8s" % hdr)
for name, hq, hkv, s in rows:
    print("%-5s %4d %5d %9d %11.4f %9.4f %8.2f %7.2f%% %8.0f %5.1f%% %8.1f" % (
        name, hq, hkv, s["parameters"], s["final_train_loss"], s["val_loss"], s["val_ppl"],
        100 * s["val_acc"], s["train_tokens_per_s"], 100 * s["mfu"], s["train_seconds"]))
sqa, mha = rows[0][3], rows[1][3]
print("* mean over the last 10 training steps")
print()
print("SQA vs MHA: %.2fx training throughput, val loss %+.4f, %d fewer parameters" % (
    sqa["train_tokens_per_s"] / mha["train_tokens_per_s"], sqa["val_loss"] - mha["val_loss"],
    mha["parameters"] - sqa["parameters"]))
print("both runs: %d s wall (target < 180 s); sgemm ceiling %.1f GFLOP/s, %d threads" % (
    elapsed, sqa["sgemm_gflops"], sqa["threads"]))
EOF
