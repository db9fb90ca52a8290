#!/usr/bin/env python3
"""Where the default path (SQA_CUDA_BACKEND=auto) should send head_dim >= 64 prefill: this
project's kernels (own) or its cuDNN-graph backend (cudnn). Times both, forward and
forward+backward, over a grid of head counts and sequence lengths (batch 1, H_q = H_kv), in one
process, alternating between them round by round (median over rounds), and the default path
(auto) next to them. Each own and auto result is compared with the cuDNN backend's output before
timing. Prints one row per config with the tile count (batch x H_q x ceil(N_q / 128), the
forward kernels' CTA count), own / cudnn, and auto against the faster of the two.

Usage: python3 bench/gpu/route_sweep.py --lib DIR/lib/libsqa.so [--dims 64,128]
       [--heads 2,4,8,16,32] [--seqs 1024,2048,4096,8192,16384,32768] [--masks causal,none]
       [--rounds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attention import DenseProblem, load_lib  # noqa: E402
from fwd_variants import event_time  # noqa: E402


def run(lib, d: int, h: int, n: int, causal: bool, rounds: int) -> dict:
    pb = DenseProblem(lib, h, h, d, n, causal)
    out, dq, dk, dv = pb.out, pb.dq, pb.dk, pb.dv
    args, bargs, flops, fb_flops = pb.args, pb.bargs, pb.flops, pb.fwdbwd_flops

    def call(backend: str, backward: bool):
        os.environ["SQA_CUDA_BACKEND"] = backend
        try:
            if lib.sqa_attention_forward(ctypes.byref(args)) != 0:
                raise RuntimeError(lib.sqa_last_error().decode())
            if backward and lib.sqa_attention_backward(ctypes.byref(bargs)) != 0:
                raise RuntimeError(lib.sqa_last_error().decode())
        finally:
            del os.environ["SQA_CUDA_BACKEND"]

    row = {"d": d, "h": h, "n": n, "causal": causal, "tiles": h * ((n + 127) // 128)}
    call("cudnn", True)
    ref = [x.float().clone() for x in (out, dq, dk, dv)]
    for backend in ("own", "auto"):
        for x in (out, dq, dk, dv):
            x.fill_(float("nan"))  # poisoned: every element must be written
        call(backend, True)
        torch.cuda.synchronize()
        for name, x, r in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), ref):
            err = float((x.float() - r).norm() / r.norm())
            row[f"err_{name}"] = max(row.get(f"err_{name}", 0.0), err)
    for backward, key, fl in ((False, "fwd", flops), (True, "fb", fb_flops)):
        times = {"own": [], "cudnn": [], "auto": []}
        order = list(times)
        for backend in order:  # warm-up
            call(backend, backward)
        for r in range(rounds):
            for backend in order[r % 3:] + order[:r % 3]:  # rotated each round
                times[backend].append(event_time(lambda: call(backend, backward)))
        for backend, ts in times.items():
            ts.sort()
            row[f"{key}_{backend}_ms"] = ts[len(ts) // 2] * 1e3
            row[f"{key}_{backend}_tflops"] = fl / ts[len(ts) // 2] / 1e12
        row[f"{key}_own_vs_cudnn"] = row[f"{key}_cudnn_ms"] / row[f"{key}_own_ms"]
        row[f"{key}_auto_vs_best"] = (min(row[f"{key}_cudnn_ms"], row[f"{key}_own_ms"]) /
                                      row[f"{key}_auto_ms"])
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", required=True)
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--heads", default="2,4,8,16,32")
    ap.add_argument("--seqs", default="1024,2048,4096,8192,16384,32768")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--masks", default="causal,none", help="causal, none or both (comma list)")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    lib = load_lib(a.lib)
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; own vs sqa's cuDNN backend "
          "(x = cudnn time / own time; > 1: own is faster)")
    print(f"{'d':>4} {'mask':>6} {'H':>3} {'N':>6} {'tiles':>6} | {'fwd own':>8} {'cudnn':>8} "
          f"{'x':>6} {'auto/best':>9} | {'fb own':>8} {'cudnn':>8} {'x':>6} {'auto/best':>9} | "
          "max err")
    for d in (int(x) for x in a.dims.split(",")):
        for causal in (m == "causal" for m in a.masks.split(",")):
            for h in (int(x) for x in a.heads.split(",")):
                for n in (int(x) for x in a.seqs.split(",")):
                    try:
                        r = run(lib, d, h, n, causal, a.rounds)
                    except Exception as ex:  # report, keep going
                        print(f"{d:>4} {'causal' if causal else 'none':>6} {h:>3} {n:>6}: "
                              f"error {str(ex)[:200]}", flush=True)
                        continue
                    rows.append(r)
                    err = max(r[f"err_{x}"] for x in ("out", "dq", "dk", "dv"))
                    print(f"{d:>4} {'causal' if causal else 'none':>6} {h:>3} {n:>6} "
                          f"{r['tiles']:>6} | {r['fwd_own_tflops']:>8.1f} "
                          f"{r['fwd_cudnn_tflops']:>8.1f} {r['fwd_own_vs_cudnn']:>5.2f}x "
                          f"{r['fwd_auto_vs_best']:>8.2f}x | "
                          f"{r['fb_own_tflops']:>8.1f} {r['fb_cudnn_tflops']:>8.1f} "
                          f"{r['fb_own_vs_cudnn']:>5.2f}x {r['fb_auto_vs_best']:>8.2f}x | "
                          f"{err:.1e}", flush=True)
                    torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
