#!/usr/bin/env python3
"""Where sqa's cuDNN path and PyTorch SDPA's cuDNN path differ when their plans use the same
engines: the GPU kernels each call launches (torch.profiler, CUPTI) with their times, plus CUDA
event timings in turns, for d = 128, N = 32k MHA (causal and not). Also times our inference
forward writing O in (B, H, N, d) order instead of (B, N, H, d), to test the output layout.
    python3 bench/gpu/cudnn_kernel_probe.py --lib .../libsqa.so [--n 32768]
Needs SQA_CUDA_BACKEND unset or cudnn (the script sets cudnn)."""
import argparse
import ctypes
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attention import DenseProblem, load_lib  # noqa: E402
from bench_cudnn import round_robin  # noqa: E402


def kernels_of(fn):
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us > 0:
            out.append((e.key[:90], e.count, round(us, 1)))
    return sorted(out, key=lambda x: -x[2])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--n", type=int, default=32768)
    a = ap.parse_args()
    os.environ["SQA_CUDA_BACKEND"] = "cudnn"
    lib = load_lib(a.lib)
    for causal in (True, False):
        hq = hkv = 32
        d, n = 128, a.n
        pb = DenseProblem(lib, hq, hkv, d, n, causal)

        def call(args, backward=False):
            f = lib.sqa_attention_backward if backward else lib.sqa_attention_forward
            if f(ctypes.byref(args)) != 0:
                raise RuntimeError(lib.sqa_last_error().decode())

        inf = type(pb.args).from_buffer_copy(pb.args)
        inf.lse = None
        out_bhsd = torch.empty(1, hq, n, d, device="cuda", dtype=torch.bfloat16)
        inf_bhsd = type(pb.args).from_buffer_copy(inf)
        inf_bhsd.out = out_bhsd.data_ptr()
        inf_bhsd.out_strides[:] = (hq * n * d, d, n * d)  # (batch, row, head) in elements
        qt, kt, vt = (x.transpose(1, 2) for x in (pb.q, pb.k, pb.v))
        qg, kg, vg = (x.detach().clone().requires_grad_(True) for x in (qt, kt, vt))
        go = pb.dout.transpose(1, 2)

        def sdpa_inf():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]), torch.no_grad():
                F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

        def sdpa_fb():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                o.backward(go)

        def ours_fb():
            call(pb.args)
            call(pb.bargs, backward=True)

        fns = {"sdpa_inf": sdpa_inf, "ours_inf": lambda: call(inf),
               "ours_inf_bhsd_out": lambda: call(inf_bhsd), "sdpa_fb": sdpa_fb,
               "ours_fb": ours_fb}
        row = {"causal": causal, "n": n, "d": d, "h": hq}
        times = round_robin(fns, 2, 9, row, "")
        row.update({f"{k}_ms": v * 1e3 for k, v in times.items()})
        row["kernels"] = {k: kernels_of(fn) for k, fn in fns.items()}
        print(json.dumps(row, indent=1), flush=True)
        del pb, qg, kg, vg
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
