#!/usr/bin/env bash
# Table 3 (issue 5), peer side: the PyTorch reference model on the H200, same run as sqa.
# Each part fits in one 10-minute device command; run them in order and keep the JSON files.
#
#   bench/paper/table3_torch.sh quick    OUTDIR   # all variants, 1024x128 + 32768x4, ~2 min
#   bench/paper/table3_torch.sh forward  OUTDIR   # forward at the paper's five sizes
#   bench/paper/table3_torch.sh train    OUTDIR   # training step 1024x128, eager + compile
#   bench/paper/table3_torch.sh selfcheck OUTDIR  # parameter counts, GPU bf16 error scale
#
# VARIANTS=xsqa,mha (default: all, incl. sw-sqa = SQA 8/4 with window 128 via flex_attention)
# splits a part further. PYTHON picks the interpreter (default python3).
set -euo pipefail
part=${1:?usage: table3_torch.sh quick|forward|train|selfcheck OUTDIR}
out=${2:?usage: table3_torch.sh PART OUTDIR}
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/../.." && pwd)
ref="$here/bench/torch_reference.py"
mkdir -p "$out"
variants=()
if [[ -n "${VARIANTS:-}" ]]; then variants=(--variants "$VARIANTS"); fi
tag=${VARIANTS:+-${VARIANTS//,/-}}
case "$part" in
  quick) "$py" "$ref" bench --quick "${variants[@]}" --out "$out/torch-quick$tag.json" ;;
  forward) "$py" "$ref" bench "${variants[@]}" --kinds forward --out "$out/torch-forward$tag.json" ;;
  train) "$py" "$ref" bench "${variants[@]}" --kinds train_eager,train_compile \
           --train-sizes 1024x128 --out "$out/torch-train$tag.json" ;;
  selfcheck) "$py" "$ref" selfcheck | tee "$out/torch-selfcheck.txt" ;;
  *) echo "table3_torch.sh: part '$part' must be quick, forward, train or selfcheck" >&2; exit 2 ;;
esac
