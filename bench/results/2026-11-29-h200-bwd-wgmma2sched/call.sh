#!/usr/bin/env bash
# Device call 3 of session 9 (2026-11-29): the one-barrier wgmma backward (SQA_CUDA_BWD=wgmma2,
# flash_bwd_wgmma2.cuh, first GPU run): backward + validation tests, compute-sanitizer on it,
# A/B against the default wgmma backward (fwd+bwd vs SDPA); then sqa.torch on the GPU and the
# cuDNN kernel probe (sqa's cuDNN path vs SDPA's with the same engines).
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/w.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
echo "== backward tests"
SQA_CUDA_BACKEND=own timeout 200 /tmp/c/bin/test_attention_cuda --gtest_brief=1 \
  --gtest_filter='CudaBackward.*:CudaValidation.*' > $o/tests.txt 2>&1; echo "rc=$?" >> $o/tests.txt; tail -6 $o/tests.txt
echo "== sanitizers (wgmma2)"
for tool in memcheck racecheck synccheck; do
  SQA_CUDA_BWD=wgmma2 SQA_TEST_SCALE=small SQA_CUDA_BACKEND=own timeout 120 compute-sanitizer --tool $tool \
    --error-exitcode 9 /tmp/c/bin/test_attention_cuda --gtest_filter=CudaBackward.SanitizerSmoke --gtest_brief=1 > /tmp/san.txt 2>&1
  echo "$tool exit $? $(grep -E 'SUMMARY' /tmp/san.txt)" | tee -a $o/sanitizers.txt
done
echo "== A/B wgmma vs wgmma2"
PYTHONUNBUFFERED=1 timeout 200 python3 bench/gpu/bwd_variants.py --lib /tmp/c/lib/libsqa.so --variants wgmma,wgmma2 \
  --configs d64-32k-mha-causal,d64-32k-mqa-causal,d64-8k-mha,d128-32k-mha-causal,d128-32k-gqa-causal,d128-8k-mha \
  --json $o/ab.json 2>&1 | tee $o/ab.txt | tail -20
echo "== sqa.torch on the GPU"
(cd python && SQA_LIBRARY=/tmp/c/lib/libsqa.so PYTHONPATH=$PWD:$PWD/tests timeout 120 python3 -m pytest -q -rf --tb=line tests/test_torch.py 2>&1 | tail -12) | tee $o/pytest.txt
echo "== cuDNN kernel probe"
PYTHONUNBUFFERED=1 timeout 120 python3 bench/gpu/cudnn_kernel_probe.py --lib /tmp/c/lib/libsqa.so > $o/probe.json 2>&1
python3 - $o/probe.json <<'PY'
import json, sys, re
text = open(sys.argv[1]).read()
for chunk in re.findall(r"\{\n.*?\n\}", text, re.S):
    r = json.loads(chunk)
    print("causal", r["causal"], {k: round(v, 3) for k, v in r.items() if k.endswith("_ms")})
    for name, ks in r["kernels"].items():
        print("  ", name, [(k[:60], c, us) for k, c, us in ks[:4]])
PY
