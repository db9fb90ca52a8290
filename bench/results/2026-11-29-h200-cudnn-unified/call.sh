#!/usr/bin/env bash
# Device call 2 of session 9 (2026-11-29): the cuDNN backend's unified forward graph (one SDPA_FWD
# operation, auto for unmasked attention) and the stats-free inference graphs: cuDNN backend
# tests, sqa.torch tests on the GPU, then bench_cudnn.py (inference / training forward / fwd+bwd,
# with the composite graph as its own column), and the engines our cuDNN plans get (cuDNN log).
set -uo pipefail
o=${1:?out}
mkdir -p /tmp/c && tar -xzf .carry-lead/u.tgz -C /tmp/c
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0] + "/lib")'):/tmp/c/lib
{ cat /tmp/c/BUILD_COMMIT; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv; } > $o/env.txt
echo "== cuDNN backend tests"
timeout 200 /tmp/c/bin/test_cudnn_backend --gtest_brief=1 > $o/tests.txt 2>&1; echo "rc=$?" >> $o/tests.txt; tail -8 $o/tests.txt
echo "== sqa.torch on the GPU"
(cd python && SQA_LIBRARY=/tmp/c/lib/libsqa.so PYTHONPATH=$PWD:$PWD/tests timeout 150 python3 -m pytest -q tests/test_torch.py 2>&1 | tail -5) | tee -a $o/tests.txt
echo "== engines of our plans (cuDNN log, one fwd+bwd each)"
CUDNN_LOGLEVEL_DBG=3 CUDNN_LOGDEST_DBG=/tmp/be.log SQA_CUDA_BACKEND=cudnn PYTHONPATH=bench/gpu timeout 60 python3 -c "
import ctypes, torch
from bench_attention import DenseProblem, load_lib
lib = load_lib('/tmp/c/lib/libsqa.so')
for hq, hkv, causal in ((32, 32, True), (32, 32, False)):
    pb = DenseProblem(lib, hq, hkv, 128, 32768, causal)
    assert lib.sqa_attention_forward(ctypes.byref(pb.args)) == 0
    assert lib.sqa_attention_backward(ctypes.byref(pb.bargs)) == 0
    torch.cuda.synchronize()
"
grep -A1 cudnnBackendExecuteGraphVisualize /tmp/be.log | grep apiLog | python3 -c "
import sys, json
for line in sys.stdin:
    j = json.loads(line.split('val=', 1)[1].rstrip().rstrip(';'))
    g = j['operationGraph']
    print(g.get('finalizeMode'), len(g['nodes']), 'ops', j['engine'])
" | tee $o/engines.txt
echo "== bench_cudnn"
PYTHONUNBUFFERED=1 timeout 330 python3 bench/gpu/bench_cudnn.py --lib /tmp/c/lib/libsqa.so --out $o > $o/bench.log 2>&1
echo "bench rc=$?"; sed -n '/^# d = 64/,$p' $o/cudnn.md
