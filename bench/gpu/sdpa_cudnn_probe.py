"""What PyTorch SDPA's cuDNN backend builds and how fast it runs, per call form.

For each config: SDPA-cuDNN forward under no_grad (inference: no LSE), forward with grad
(training: LSE kept for the backward) and forward + backward, timed with CUDA events (median).
Run with cuDNN's and cudnn-frontend's logging on (CUDNN_LOGLEVEL_DBG, CUDNN_FRONTEND_LOG_INFO)
to see which operation graph (the unified SDPA op or the composite matmul/softmax graph) and
which engine each form gets; --once runs each form once (for the logs) instead of timing.
    python3 bench/gpu/sdpa_cudnn_probe.py [--once] [--configs d128-none-mha,...]
"""
import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

CONFIGS = {
    "d128-none-mha": (128, 32, 32, False),
    "d128-none-sqa": (128, 16, 8, False),
    "d128-causal-mha": (128, 32, 32, True),
    "d64-none-mha": (64, 16, 16, False),
}


def median_ms(fn, warm=2, rep=9):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(rep):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--once", action="store_true")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--n", type=int, default=32768)
    args = ap.parse_args()
    rows = []
    for name in args.configs.split(","):
        d, hq, hkv, causal = CONFIGS[name]
        n = args.n
        shape = lambda h: (1, h, n, d)  # noqa: E731
        q = torch.randn(shape(hq), device="cuda", dtype=torch.bfloat16)
        k = torch.randn(shape(hkv), device="cuda", dtype=torch.bfloat16)
        v = torch.randn(shape(hkv), device="cuda", dtype=torch.bfloat16)
        go = torch.randn(shape(hq), device="cuda", dtype=torch.bfloat16)
        qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
        gqa = hq != hkv

        def infer():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]), torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)

        def train_fwd():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal, enable_gqa=gqa)

        def fwd_bwd():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal, enable_gqa=gqa)
                o.backward(go)

        flops = 4.0 * n * n * d * hq * (0.5 if causal else 1.0)
        row = {"config": name, "n": n}
        for form, fn, mult in (("infer", infer, 1.0), ("train_fwd", train_fwd, 1.0),
                               ("fwd_bwd", fwd_bwd, 3.5)):
            print(f"=== {name} {form}", flush=True)
            if args.once:
                fn()
                torch.cuda.synchronize()
                continue
            ms = median_ms(fn)
            row[f"{form}_ms"] = ms
            row[f"{form}_tflops"] = flops * mult / ms / 1e9
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
