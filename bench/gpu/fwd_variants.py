#!/usr/bin/env python3
"""A/B of the forward kernel variants (SQA_CUDA_FWD, flash_fwd_launch.cuh) at small head dims,
against PyTorch SDPA (cuDNN and FA2 backends) on the same tensors in the same process.

Timings alternate between the variants round by round (median over rounds), so clock drift and
power capping hit every variant alike. Every variant's output is compared with the cuDNN peer's
(relative Frobenius error) before it is timed, so a fast wrong variant shows as such.

Usage: python3 bench/gpu/fwd_variants.py --lib DIR/lib/libsqa.so [--variants sum2occ,sum2]
       [--configs d16-200k,...] [--rounds 5] [--json FILE]
"""

from __future__ import annotations

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

# name: (H_q, H_kv, d, N, causal)
CONFIGS = {
    "d16-200k-mha": (16, 16, 16, 200_000, False),
    "d16-200k-xsqa": (4, 4, 16, 200_000, False),
    "d16-200k-mha-causal": (16, 16, 16, 200_000, True),
    "d16-32k-mha-causal": (16, 16, 16, 32_768, True),
    "d16-32k-mqa-causal": (16, 1, 16, 32_768, True),
    "d16-32k-xsqa-causal": (4, 4, 16, 32_768, True),
    "d32-32k-mha-causal": (16, 16, 32, 32_768, True),
    "d32-32k-xsqa-causal": (4, 4, 32, 32_768, True),
    # Larger head dims (issue 3's "own kernel >= 0.8x cuDNN" rows): not in the default list.
    "d64-32k-mha-causal": (16, 16, 64, 32_768, True),
    "d64-32k-mha": (16, 16, 64, 32_768, False),
    "d64-32k-xsqa-causal": (4, 4, 64, 32_768, True),
    "d128-32k-mha-causal": (32, 32, 128, 32_768, True),
    "d128-32k-mha": (32, 32, 128, 32_768, False),
    "d128-32k-xsqa-causal": (8, 8, 128, 32_768, True),
    "d128-32k-xsqa": (8, 8, 128, 32_768, False),
    "d128-32k-sqa": (16, 8, 128, 32_768, False),
    # MHA's query heads with xSQA's KV heads, and SQA's query heads with MHA-like KV: which of
    # the two head counts makes d128 MHA slower per FLOP (run 38)?
    "d128-32k-gqa": (32, 8, 128, 32_768, False),
    "d64-32k-xsqa": (4, 4, 64, 32_768, False),
    # Many KV heads at shorter N (the forward raster's threshold; route sweep of 2026-11-30)
    "d128-8k-mha32": (32, 32, 128, 8_192, False),
    "d128-8k-mha64": (64, 64, 128, 8_192, False),
    "d128-16k-mha32": (32, 32, 128, 16_384, False),
    "d64-32k-sqa": (8, 4, 64, 32_768, False),
    "d128-32k-ssqa": (16, 16, 128, 32_768, False),
}
DEFAULT_CONFIGS = [name for name in CONFIGS if name.startswith(("d16", "d32"))]


def variant_env(variant: str, default_name: str) -> tuple:
    """A variant is a value of default_name (SQA_CUDA_FWD / SQA_CUDA_BWD), or NAME=VALUE for
    another variable (e.g. SQA_CUDA_RASTER=2)."""
    if "=" in variant:
        name, value = variant.split("=", 1)
        return name, value
    return default_name, variant


class env_set:
    """Context: the variable of variant_env set for the calls inside, removed after."""

    def __init__(self, variant: str, default_name: str):
        self.name, self.value = variant_env(variant, default_name)

    def __enter__(self):
        os.environ[self.name] = self.value

    def __exit__(self, *exc):
        del os.environ[self.name]


def event_time(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


def run(lib, name: str, variants: list[str], rounds: int) -> dict:
    hq, hkv, d, n, causal = CONFIGS[name]
    pb = DenseProblem(lib, hq, hkv, d, n, causal)
    q, k, v, out, args, flops = pb.q, pb.k, pb.v, pb.out, pb.args, pb.flops

    def ours(variant: str):
        with env_set(variant, "SQA_CUDA_FWD"):
            if lib.sqa_attention_forward(ctypes.byref(args)) != 0:
                raise RuntimeError(lib.sqa_last_error().decode())

    # SDPA wants equal head counts: repeat K/V over the groups (GQA family only here).
    qt = q.transpose(1, 2)
    kt = k.transpose(1, 2).repeat_interleave(hq // hkv, 1)
    vt = v.transpose(1, 2).repeat_interleave(hq // hkv, 1)

    def peer(backend):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

    ref = peer(SDPBackend.CUDNN_ATTENTION).float()
    row = {"config": name, "hq": hq, "hkv": hkv, "d": d, "n": n, "causal": causal, "flops": flops}
    runners = {}
    for variant in variants:
        out.fill_(float("nan"))  # poisoned: a variant that skips rows cannot match
        ours(variant)
        torch.cuda.synchronize()
        err = (out.float().transpose(1, 2) - ref).norm() / ref.norm()
        row[f"{variant}_rel_err"] = float(err)
        runners[variant] = lambda v=variant: ours(v)
    runners["cudnn"] = lambda: peer(SDPBackend.CUDNN_ATTENTION)
    runners["fa2"] = lambda: peer(SDPBackend.FLASH_ATTENTION)
    time_in_rounds(row, runners, variants, rounds, flops)
    return row


def time_in_rounds(row: dict, runners: dict, variants: list[str], rounds: int,
                   flops: float) -> None:
    """Times every runner (the variants, then the peers "cudnn" and "fa2") once per round, in
    turn, and writes each one's median ms and TFLOP/s and each variant's ratio to the best
    peer into row."""
    for fn in runners.values():  # warm-up
        fn()
    times = {key: [] for key in runners}
    for _ in range(rounds):
        for key, fn in runners.items():
            times[key].append(event_time(fn))
    for key, ts in times.items():
        ts.sort()
        t = ts[len(ts) // 2]
        row[f"{key}_ms"] = t * 1e3
        row[f"{key}_tflops"] = flops / t / 1e12
    best_peer = min(row["cudnn_ms"], row["fa2_ms"])
    for variant in variants:
        row[f"{variant}_vs_best_peer"] = best_peer / row[f"{variant}_ms"]


def variants_main(doc: str, run_config, configs: list[str], variants: str, what: str) -> int:
    """The command line shared by the A/B scripts: runs run_config(lib, name, variants, rounds)
    for each config, prints a table of TFLOP/s (x the best peer) with each variant's error, and
    optionally writes the rows as JSON."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--lib", required=True)
    ap.add_argument("--variants", default=variants)
    ap.add_argument("--configs", default=",".join(configs))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    # The variants are this project's kernels: keep the automatic routing from sending d >= 64
    # to cuDNN (an explicit SQA_CUDA_BACKEND still wins).
    os.environ.setdefault("SQA_CUDA_BACKEND", "own")
    lib = load_lib(a.lib)
    names = [v for v in a.variants.split(",") if v]
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {what} TFLOP/s "
          "(x best SDPA peer)")
    print(f"{'config':24s} " + " ".join(f"{v:>16s}" for v in names) +
          f" {'cudnn':>7s} {'fa2':>7s}")
    for name in a.configs.split(","):
        r = run_config(lib, name, names, a.rounds)
        rows.append(r)
        cells = " ".join(f"{r[f'{v}_tflops']:6.1f} ({r[f'{v}_vs_best_peer']:4.2f}x)"
                         for v in names)
        errs = " ".join(f"{r[f'{v}_rel_err']:.1e}" for v in names)
        print(f"{name:24s} {cells} {r['cudnn_tflops']:7.1f} {r['fa2_tflops']:7.1f}  err {errs}",
              flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "rows": rows}, f, indent=1)
    return 0


def main() -> int:
    return variants_main(__doc__, run, DEFAULT_CONFIGS, "sum2occq,sum2occ,sum2", "forward")


if __name__ == "__main__":
    sys.exit(main())
