#!/usr/bin/env python3
"""A/B of the backward kernel variants (SQA_CUDA_BWD, flash_bwd_launch.cuh): small head dims
(base, occ, occ2) and D = 64 / 128 (occ against wgmma, the default there; --configs
d64-...,d128-...); at D = 32 also occ (the default) against wgmma (--variants occ,wgmma):
forward + backward against PyTorch SDPA's (cuDNN and FA2 backends) on the same tensors in the
same process.

Timings alternate between the variants round by round (median over rounds), so clock drift and
power capping hit every variant alike. Each variant's dQ, dK and dV are poisoned with NaN, then
compared with the FA2 peer's gradients (relative Frobenius error) before anything is timed, so a
fast wrong variant shows as such.

Usage: python3 bench/gpu/bwd_variants.py --lib DIR/lib/libsqa.so [--variants base,occ,occ2]
       (a variant NAME=VALUE sets that variable instead, e.g. SQA_CUDA_RASTER=2)
       [--configs d16-32k-mha-causal,...] [--rounds 5] [--json FILE] [--deterministic]
--deterministic: our backward in the deterministic scheme (AttentionBackwardParams::deterministic:
dK/dV without dQ, then the dQ kernel; e.g. --variants wgmma,wgmmatma for its TMA producer form);
the SDPA peers have no such scheme and run as always.
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attention import DenseProblem  # noqa: E402
from fwd_variants import env_set, time_in_rounds, variants_main  # noqa: E402

# name: (H_q, H_kv, d, N, causal)
CONFIGS = {
    "d16-32k-mha-causal": (16, 16, 16, 32_768, True),
    "d16-32k-mqa-causal": (16, 1, 16, 32_768, True),
    "d16-32k-xsqa-causal": (4, 4, 16, 32_768, True),
    "d16-32k-xsmqa-causal": (4, 1, 16, 32_768, True),
    "d32-32k-mha-causal": (16, 16, 32, 32_768, True),
    "d32-32k-mqa-causal": (16, 1, 32, 32_768, True),
    "d32-32k-xsqa-causal": (4, 4, 32, 32_768, True),
    # occ (the default) against SQA_CUDA_BWD=wgmma (flash_bwd_wgmma.cuh at D = 32) too
    "d32-32k-gqa-causal": (16, 4, 32, 32_768, True),
    "d32-32k-sqa-causal": (8, 4, 32, 32_768, True),
    # SQA_CUDA_BWD=wgmma (flash_bwd_wgmma.cuh, the default) against occ at D = 64 and 128
    "d64-32k-mha-causal": (16, 16, 64, 32_768, True),
    "d64-32k-mqa-causal": (16, 1, 64, 32_768, True),
    "d64-8k-mha": (16, 16, 64, 8_192, False),
    "d128-32k-mha-causal": (16, 16, 128, 32_768, True),
    "d128-32k-gqa-causal": (16, 4, 128, 32_768, True),
    "d128-8k-mha": (16, 16, 128, 8_192, False),
    # issue 3's group C rows at 32k (H = 16 at d64, 32 at d128)
    "d64-32k-mha": (16, 16, 64, 32_768, False),
    "d128-32k-mha": (32, 32, 128, 32_768, False),
    "d128-32k-sqa-causal": (16, 8, 128, 32_768, True),
    "d128-32k-mha-causal32": (32, 32, 128, 32_768, True),
    "d128-32k-xsqa": (8, 8, 128, 32_768, False),
    "d64-32k-xsqa": (4, 4, 64, 32_768, False),
}


# --deterministic (taken off the command line before the shared parser sees it)
DETERMINISTIC = False


def run(lib, name: str, variants: list[str], rounds: int) -> dict:
    hq, hkv, d, n, causal = CONFIGS[name]
    pb = DenseProblem(lib, hq, hkv, d, n, causal)
    q, k, v, dout, dq, dk, dv = pb.q, pb.k, pb.v, pb.dout, pb.dq, pb.dk, pb.dv
    args, bargs, flops = pb.args, pb.bargs, pb.fwdbwd_flops
    bargs.deterministic = 1 if DETERMINISTIC else 0

    def ours(variant: str):
        with env_set(variant, "SQA_CUDA_BWD"):
            if lib.sqa_attention_forward(ctypes.byref(args)) != 0:
                raise RuntimeError(lib.sqa_last_error().decode())
            if lib.sqa_attention_backward(ctypes.byref(bargs)) != 0:
                raise RuntimeError(lib.sqa_last_error().decode())

    qt, kt, vt = (x.transpose(1, 2).detach().clone().requires_grad_(True) for x in (q, k, v))
    go = dout.transpose(1, 2)

    def peer(backend):
        with sdpa_kernel([backend]):
            o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=hq != hkv)
            o.backward(go)

    qt.grad = kt.grad = vt.grad = None
    peer(SDPBackend.FLASH_ATTENTION)
    ref = [x.grad.transpose(1, 2).float() for x in (qt, kt, vt)]
    row = {"config": name, "hq": hq, "hkv": hkv, "d": d, "n": n, "causal": causal, "flops": flops,
           "deterministic": DETERMINISTIC}
    runners = {}
    for variant in variants:
        for x in (dq, dk, dv):
            x.fill_(float("nan"))  # poisoned: a variant that skips rows cannot match
        ours(variant)
        torch.cuda.synchronize()
        errs = [float((mine.float() - theirs).norm() / theirs.norm())
                for mine, theirs in zip((dq, dk, dv), ref)]
        row[f"{variant}_rel_err"] = max(errs)
        runners[variant] = lambda v=variant: ours(v)
    runners["cudnn"] = lambda: peer(SDPBackend.CUDNN_ATTENTION)
    runners["fa2"] = lambda: peer(SDPBackend.FLASH_ATTENTION)
    time_in_rounds(row, runners, variants, rounds, flops)
    return row


def main() -> int:
    global DETERMINISTIC
    DETERMINISTIC = "--deterministic" in sys.argv[1:]
    if DETERMINISTIC:
        sys.argv.remove("--deterministic")
    what = "forward + deterministic backward" if DETERMINISTIC else "forward + backward"
    return variants_main(__doc__, run, list(CONFIGS), "base,occ,occ2", what)


if __name__ == "__main__":
    sys.exit(main())
