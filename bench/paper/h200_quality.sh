#!/usr/bin/env bash
# One device command for Tables 1 and 2 (issue 5): bench/paper/quality.py on the H200, time-boxed
# so it fits the device's 10-minute limit. Runs finished in an earlier command are skipped when
# their summary.json files are in RUNS_DIR (copy them back from the last command's results), so
# repeating the command completes the table. What comes back in $OUT (the device returns at most
# 8 files): env.txt, quality-log.txt, results.json and quality-runs.tgz, which holds each run's
# summary.json, metrics.jsonl, config.json and (with --jobs > 1) train.log; unpack it into
# RUNS_DIR to continue there.
#
#   bench/paper/h200_quality.sh CARRY.tgz RUNS_DIR BUDGET_S [quality.py options...]
#   e.g. bench/paper/h200_quality.sh .carry-lead/sqa.tgz .carry-lead/table1 520 --table 1 \
#          --device cuda --data .carry-lead/english-docs-10000.tok \
#          --tokenizer .carry-lead/tokenizer-10000.json --tokens 42.9e6
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
carry=${1:?usage: h200_quality.sh CARRY.tgz RUNS_DIR BUDGET_S [quality.py options...]}
runs=${2:?usage: h200_quality.sh CARRY.tgz RUNS_DIR BUDGET_S [quality.py options...]}
budget=${3:?usage: h200_quality.sh CARRY.tgz RUNS_DIR BUDGET_S [quality.py options...]}
shift 3
source bench/paper/h200_env.sh "$carry" quality
python3 bench/paper/quality.py --sqa "$sqa" --out "$runs" --time-budget "$budget" "$@" 2>&1 |
  tee "$out/quality-log.txt"
(cd "$runs" && find . -mindepth 2 -maxdepth 2 \( -name summary.json -o -name metrics.jsonl \
  -o -name config.json -o -name train.log \) -print0 | tar -czf - --null -T -) \
  >"$out/quality-runs.tgz"
cp "$runs/results.json" "$out/" 2>/dev/null
echo "== done" | tee -a "$out/env.txt"
