#!/usr/bin/env bash
# bench/cpu/run.sh: the issue-2 CPU acceptance benchmark, on a quiet machine.
#
# Builds Release, then in ONE `sqa bench attention` run (so kernels and ceilings share the
# machine state): H = 16, d = 64, N = 4096, fp32, every variant, forward and backward, plus
# decode (N_q = 1) against N_k = 32768. The in-run peers are OpenBLAS sgemm (4096^3, best of
# runs) and a multi-threaded memcpy (bytes read + written). Writes
#   bench/results/<date>-cpu-attention.json   date, machine, commit, peers, acceptance, rows
#   bench/results/<date>-cpu-attention.md     the same as tables
# Environment overrides (for quick trials; the defaults are the acceptance set):
#   SQA_BUILD_DIR (build)  SQA_BENCH_SEQ (4096)  SQA_BENCH_DECODE_SEQ (32768)
#   SQA_BENCH_REPEAT (2)   SQA_BENCH_ROUNDS (3)   SQA_BENCH_OUT (bench/results)
# Every row is timed in 3 rounds of 2 runs, the rounds in turn over all rows (--rounds): on a
# shared VM a slow spell then costs one round of each variant, not every run of one.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${SQA_BUILD_DIR:-$root/build}
seq=${SQA_BENCH_SEQ:-4096}
decode_seq=${SQA_BENCH_DECODE_SEQ:-32768}
repeat=${SQA_BENCH_REPEAT:-2}
rounds=${SQA_BENCH_ROUNDS:-3}
outdir=${SQA_BENCH_OUT:-$root/bench/results}

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target sqa_cli -j "$(nproc)"
build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:STRING=//p' "$build/CMakeCache.txt")
if [ "$build_type" != "Release" ]; then
  echo "run.sh: $build is a $build_type build; benchmarks need Release" >&2
  exit 1
fi

mkdir -p "$outdir"
stem="$outdir/$(date -u +%Y-%m-%d)-cpu-attention"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$build/sqa" info | tee "$tmp/info.txt"
echo
cmd=("$build/sqa" bench attention --heads 16 --head-dim 64 --seq "$seq" --dtype f32
     --backward --decode-seq "$decode_seq" --repeat "$repeat" --rounds "$rounds" --warmup 1 --sgemm-size 4096
     --memcpy-mib 512 --json "$tmp/rows.json")
echo "+ ${cmd[*]}"
"${cmd[@]}" | tee "$tmp/table.txt"

machine=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
python3 "$root/bench/cpu/report.py" --rows "$tmp/rows.json" --info "$tmp/info.txt" \
  --machine "$machine, $(nproc) CPUs, $(uname -r)" --command "sqa ${cmd[*]:1}" \
  --heads 16 --json "$stem.json" --md "$stem.md"
echo "wrote $stem.json and $stem.md"
