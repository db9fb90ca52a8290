#!/usr/bin/env python3
"""H200 benchmark: sqa's CUDA attention (through the C API, libsqa.so) against PyTorch SDPA's
FlashAttention-2 and cuDNN backends, on the same tensors, in the same process.

Every number is the median of CUDA-event timings after warm-up. TFLOP/s use the library's own
FLOP count (sqa_attention_forward_flops: exact mask area). The in-run ceilings (bf16 matmul
8192^3 on random data, device-to-device copy) are measured first. Each config is also checked
against the peer's output (relative error), so a fast wrong kernel cannot pass.

Usage: python3 bench/gpu/bench_attention.py --lib build-cuda/src/capi/libsqa.so --out DIR
       [--quick] [--only SUBSTRING[,SUBSTRING...]] (groups whose name contains any of them)
Writes DIR/bench.json and DIR/bench.md and prints the table.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# ---- C API mirror (include/sqa/sqa.h) ---------------------------------------------------------
_i64x3 = ctypes.c_int64 * 3


class Spec(ctypes.Structure):
    _fields_ = [("num_query_heads", ctypes.c_int32), ("num_kv_heads", ctypes.c_int32),
                ("head_dim", ctypes.c_int32), ("softmax_scale", ctypes.c_float),
                ("window_left", ctypes.c_int32), ("window_right", ctypes.c_int32)]


class Args(ctypes.Structure):
    _fields_ = [("spec", Spec), ("dtype", ctypes.c_int), ("device", ctypes.c_int),
                ("stream", ctypes.c_void_p), ("batch", ctypes.c_int64),
                ("seqlen_q", ctypes.c_int64), ("seqlen_k", ctypes.c_int64),
                ("cu_seqlens_q", ctypes.c_void_p), ("cu_seqlens_k", ctypes.c_void_p),
                ("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p),
                ("out", ctypes.c_void_p), ("lse", ctypes.c_void_p),
                ("q_strides", _i64x3), ("k_strides", _i64x3), ("v_strides", _i64x3),
                ("out_strides", _i64x3)]


class BackwardArgs(ctypes.Structure):
    _fields_ = [("forward", Args), ("dout", ctypes.c_void_p), ("dq", ctypes.c_void_p),
                ("dk", ctypes.c_void_p), ("dv", ctypes.c_void_p), ("dout_strides", _i64x3),
                ("dq_strides", _i64x3), ("dk_strides", _i64x3), ("dv_strides", _i64x3),
                ("deterministic", ctypes.c_int32)]


SQA_BF16, SQA_DEVICE_CUDA = 1, 1


class DenseProblem:
    """One dense, batch-1, bf16 problem on the GPU for the A/B scripts: fresh random q, k, v and
    dout, empty out / lse / dq / dk / dv, the C API's forward and backward argument structs
    pointing at them, and the forward and forward+backward FLOP counts (sqa's own counters)."""

    def __init__(self, lib: ctypes.CDLL, hq: int, hkv: int, d: int, n: int, causal: bool):
        ha = max(hq, hkv)  # output heads (H_kv for rSQA)
        bf16 = dict(device="cuda", dtype=torch.bfloat16)
        self.q = torch.randn(1, n, hq, d, **bf16)
        self.k = torch.randn(1, n, hkv, d, **bf16)
        self.v = torch.randn(1, n, hkv, d, **bf16)
        self.dout = torch.randn(1, n, ha, d, **bf16)
        self.out = torch.empty(1, n, ha, d, **bf16)
        self.lse = torch.empty(1, ha, n, device="cuda", dtype=torch.float32)
        self.dq, self.dk, self.dv = (torch.empty_like(x) for x in (self.q, self.k, self.v))
        self.spec = Spec(hq, hkv, d, 0.0, -1, 0 if causal else -1)
        self.args = Args()
        self.args.spec, self.args.dtype, self.args.device = self.spec, SQA_BF16, SQA_DEVICE_CUDA
        self.args.stream = torch.cuda.current_stream().cuda_stream
        self.args.batch, self.args.seqlen_q, self.args.seqlen_k = 1, n, n
        self.args.q, self.args.k, self.args.v, self.args.out, self.args.lse = (
            x.data_ptr() for x in (self.q, self.k, self.v, self.out, self.lse))
        self.bargs = BackwardArgs()
        self.bargs.forward = self.args
        self.bargs.dout, self.bargs.dq, self.bargs.dk, self.bargs.dv = (
            x.data_ptr() for x in (self.dout, self.dq, self.dk, self.dv))
        self.flops = lib.sqa_attention_forward_flops(ctypes.byref(self.spec), 1, n, n)
        self.fwdbwd_flops = self.flops + lib.sqa_attention_backward_flops(
            ctypes.byref(self.spec), 1, n, n)


def build_commit(lib) -> str:
    """The commit libsqa.so was built from (sqa_build_commit); the git HEAD of the working tree
    where an older library lacks it (on the GPU machine that copy's HEAD can be stale)."""
    if hasattr(lib, "sqa_build_commit"):
        lib.sqa_build_commit.restype = ctypes.c_char_p
        return lib.sqa_build_commit().decode()
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def load_lib(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    lib.sqa_attention_forward.restype = ctypes.c_int
    lib.sqa_attention_forward.argtypes = [ctypes.POINTER(Args)]
    lib.sqa_attention_backward.restype = ctypes.c_int
    lib.sqa_attention_backward.argtypes = [ctypes.POINTER(BackwardArgs)]
    lib.sqa_attention_backward_flops.restype = ctypes.c_double
    lib.sqa_attention_backward_flops.argtypes = [ctypes.POINTER(Spec), ctypes.c_int64,
                                                 ctypes.c_int64, ctypes.c_int64]
    lib.sqa_attention_forward_flops.restype = ctypes.c_double
    lib.sqa_attention_forward_flops.argtypes = [ctypes.POINTER(Spec), ctypes.c_int64,
                                                ctypes.c_int64, ctypes.c_int64]
    lib.sqa_last_error.restype = ctypes.c_char_p
    lib.sqa_cuda_available.restype = ctypes.c_int
    return lib


# ---- timing -----------------------------------------------------------------------------------

def median_time(fn, warm: int, rep: int) -> float:
    """Median seconds of fn over rep CUDA-event-timed runs after warm runs."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rep):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return times[len(times) // 2]


def ceilings() -> dict:
    dev = "cuda"
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    t = median_time(lambda: a @ b, 3, 10)
    matmul = 2 * 8192**3 / t / 1e12
    x = torch.randn(2**30, device=dev, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    t = median_time(lambda: y.copy_(x), 3, 10)
    copy = 2 * x.numel() * 2 / t / 1e12  # bytes read + written
    del a, b, x, y
    torch.cuda.empty_cache()
    return {"bf16_matmul_tflops": matmul, "copy_TBps": copy}


# ---- one config -------------------------------------------------------------------------------

VARIANTS = ("base", "ilp", "occ", "pipe")
PEERS = {"fa2": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def run_config(lib, cfg: dict, ceil: dict, quick: bool) -> dict:
    name, hq, hkv, d = cfg["name"], cfg["hq"], cfg["hkv"], cfg["d"]
    nq, nk, batch = cfg["nq"], cfg["nk"], cfg.get("batch", 1)
    causal = cfg["causal"]
    dev = "cuda"
    ha = max(hq, hkv)
    # Our layout (B, N, H, d); SDPA takes (B, H, N, d) views of the same storage.
    q = torch.randn(batch, nq, hq, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(batch, nk, hkv, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn(batch, nk, hkv, d, device=dev, dtype=torch.bfloat16)
    out = torch.empty(batch, nq, ha, d, device=dev, dtype=torch.bfloat16)
    lse = torch.empty(batch, ha, nq, device=dev, dtype=torch.float32)
    spec = Spec(hq, hkv, d, 0.0, -1, 0 if causal else -1)
    args = Args()
    args.spec = spec
    args.dtype = SQA_BF16
    args.device = SQA_DEVICE_CUDA
    args.stream = torch.cuda.current_stream().cuda_stream
    args.batch, args.seqlen_q, args.seqlen_k = batch, nq, nk
    args.q, args.k, args.v = q.data_ptr(), k.data_ptr(), v.data_ptr()
    args.out, args.lse = out.data_ptr(), lse.data_ptr()
    flops = lib.sqa_attention_forward_flops(ctypes.byref(spec), batch, nq, nk)

    def ours():
        status = lib.sqa_attention_forward(ctypes.byref(args))
        if status != 0:
            raise RuntimeError(lib.sqa_last_error().decode())

    long_run = flops > 2e13
    warm, rep = (1, 3) if long_run or quick else (3, 15)
    row = dict(cfg)
    row["flops"] = flops
    try:
        t = median_time(ours, warm, rep)
        row["ours_ms"] = t * 1e3
        row["ours_tflops"] = flops / t / 1e12
        row["ours_pct_peak"] = 100 * row["ours_tflops"] / ceil["bf16_matmul_tflops"]
        if d <= 64 and not cfg.get("decode"):
            # A/B in the same process: every prefill variant (flash_fwd_launch.cuh).
            # The caller's SQA_CUDA_FWD (if any) comes back after each variant.
            caller = os.environ.get("SQA_CUDA_FWD")
            for variant in VARIANTS:
                os.environ["SQA_CUDA_FWD"] = variant
                try:
                    t = median_time(ours, warm, rep)
                finally:
                    if caller is None:
                        del os.environ["SQA_CUDA_FWD"]
                    else:
                        os.environ["SQA_CUDA_FWD"] = caller
                row[f"ours_{variant}_tflops"] = flops / t / 1e12
    except Exception as ex:  # report, keep going
        row["ours_error"] = str(ex)[:300]

    bwd = cfg.get("bwd", False)
    if bwd:
        dout = torch.randn_like(out)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        bargs = BackwardArgs()
        bargs.forward = args
        bargs.dout, bargs.dq, bargs.dk, bargs.dv = (x.data_ptr() for x in (dout, dq, dk, dv))
        bflops = flops + lib.sqa_attention_backward_flops(ctypes.byref(spec), batch, nq, nk)
        row["fwdbwd_flops"] = bflops

        def ours_fb():
            ours()
            status = lib.sqa_attention_backward(ctypes.byref(bargs))
            if status != 0:
                raise RuntimeError(lib.sqa_last_error().decode())
        try:
            t = median_time(ours_fb, 1, 3 if quick or long_run else 5)
            row["ours_fb_ms"] = t * 1e3
            row["ours_fb_tflops"] = bflops / t / 1e12
            # The deterministic scheme (separate dQ kernel) next to the default (dQ summed by fp32
            # reductions in any order).
            bargs.deterministic = 1
            try:
                t = median_time(ours_fb, 1, 3)
            finally:
                bargs.deterministic = 0
            row["ours_fb_det_ms"] = t * 1e3
            row["ours_fb_det_tflops"] = bflops / t / 1e12
        except Exception as ex:
            row["ours_fb_error"] = str(ex)[:300]

    # Peer: SDPA on (B, H, N, d) views. rSQA has no peer layout: its equivalent repeats the query
    # heads (tiled, as head_pair) to H_kv heads, which SDPA then runs as MHA.
    q_peer = q.repeat(1, 1, hkv // hq, 1) if hq < hkv else q
    qt, kt, vt = (x.transpose(1, 2) for x in (q_peer, k, v))
    gqa = qt.shape[1] != kt.shape[1]
    # SDPA's causal is top-left aligned; ours is bottom-right. They agree when N_q == N_k, and
    # decode (N_q < N_k) runs non-causal here.
    peer_causal = causal and nq == nk
    ref = None
    for peer, backend in PEERS.items():
        def fn():
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=peer_causal, enable_gqa=gqa)
        try:
            with sdpa_kernel([backend]), torch.no_grad():
                t = median_time(fn, warm, rep)
                if ref is None:
                    ref = fn().transpose(1, 2).float()
            row[f"{peer}_ms"] = t * 1e3
            row[f"{peer}_tflops"] = flops / t / 1e12
        except Exception as ex:
            row[f"{peer}_error"] = str(ex).split("\n")[0][:200]
        if bwd:
            qg, kg, vg = (x.detach().clone().requires_grad_(True) for x in (qt, kt, vt))
            go = dout.transpose(1, 2)

            def fb():
                o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=peer_causal, enable_gqa=gqa)
                o.backward(go)
            try:
                with sdpa_kernel([backend]):
                    t = median_time(fb, 1, 3 if quick or long_run else 5)
                row[f"{peer}_fb_ms"] = t * 1e3
                row[f"{peer}_fb_tflops"] = row["fwdbwd_flops"] / t / 1e12
                if peer == "fa2" and "ours_fb_ms" in row:
                    # Gradient check against the peer's (rSQA: the repeated-Q peer's dQ summed
                    # over the repeats, which is what head_pair's tiling means).
                    qg.grad = kg.grad = vg.grad = None
                    fb()
                    ours_fb()
                    torch.cuda.synchronize()
                    pdq = qg.grad.transpose(1, 2)
                    if hq < hkv:
                        pdq = pdq.reshape(batch, nq, hkv // hq, hq, d).sum(2)
                    for nm, mine, theirs in (("dq", dq, pdq), ("dk", dk, kg.grad.transpose(1, 2)),
                                             ("dv", dv, vg.grad.transpose(1, 2))):
                        theirs = theirs.float()
                        row[f"rel_err_{nm}_vs_peer"] = float((mine.float() - theirs).norm() /
                                                             theirs.norm())
            except Exception as ex:
                row[f"{peer}_fb_error"] = str(ex).split("\n")[0][:200]
    peers = [row[f"{p}_ms"] for p in PEERS if f"{p}_ms" in row]
    fb_peers = [row[f"{p}_fb_ms"] for p in PEERS if f"{p}_fb_ms" in row]
    if fb_peers and "ours_fb_ms" in row:
        row["fb_speedup_vs_best_peer"] = min(fb_peers) / row["ours_fb_ms"]
        if "cudnn_fb_ms" in row:
            row["fb_speedup_vs_cudnn"] = row["cudnn_fb_ms"] / row["ours_fb_ms"]
    if peers and "ours_ms" in row:
        row["best_peer_ms"] = min(peers)
        row["speedup_vs_best_peer"] = row["best_peer_ms"] / row["ours_ms"]
        if "cudnn_ms" in row:
            row["speedup_vs_cudnn"] = row["cudnn_ms"] / row["ours_ms"]
    if ref is not None and "ours_ms" in row:
        ours()
        torch.cuda.synchronize()
        diff = (out.float() - ref).norm() / ref.norm()
        row["rel_err_vs_peer"] = float(diff)
    if cfg.get("decode"):
        kv_bytes = 2 * k.numel() * k.element_size()
        row["kv_bytes"] = kv_bytes
        # Split-KV sweep: CTAs per SM that the split count aims for (default 8).
        for per_sm in (4, 16, 32):
            os.environ["SQA_CUDA_DECODE_CTAS_PER_SM"] = str(per_sm)
            try:
                t = median_time(ours, warm, rep)
            finally:
                del os.environ["SQA_CUDA_DECODE_CTAS_PER_SM"]
            row[f"ours_TBps_{per_sm}_per_sm"] = kv_bytes / t / 1e12
        if "ours_ms" in row:
            row["ours_TBps"] = kv_bytes / (row["ours_ms"] / 1e3) / 1e12
            row["ours_pct_copy_bw"] = 100 * row["ours_TBps"] / ceil["copy_TBps"]
    del q, k, v, out, lse, q_peer, ref, qt, kt, vt
    torch.cuda.empty_cache()
    return row


# ---- the acceptance list of issue 3 -----------------------------------------------------------

def paper_layouts(h: int) -> list:
    return [("mha", h, h), ("gqa", h, h // 4), ("mqa", h, 1), ("sqa", h // 2, h // 4),
            ("ssqa", h // 2, h // 2), ("xsqa", h // 4, h // 4), ("xsmqa", h // 4, 1),
            ("lsqa", 3 * h // 4, h // 4), ("rsqa", h // 4, h // 2)]


def configs(quick: bool) -> list:
    c = []

    def add(group, name, hq, hkv, d, n, causal, target, nk=None, batch=1, decode=False, bwd=False):
        c.append(dict(group=group, name=name, hq=hq, hkv=hkv, d=d, nq=n, nk=nk or n,
                      causal=causal, batch=batch, target=target, decode=decode, bwd=bwd))

    # Decode first: the memory-bound kernel is the one most sensitive to a warm, throttled card.
    add("F decode N_q=1 N_k=128k B16 d64", "sqa", 8, 4, 64, 1, False, ">= 70% copy BW",
        nk=131072, batch=16, decode=True)
    n200 = 50_000 if quick else 200_000
    for name, hq, hkv in [("mha", 16, 16), ("xsqa", 4, 4)]:
        add("A d16 N200k non-causal", name, hq, hkv, 16, n200, False, "2.0x peer")
    for d in (16, 32):
        for name, hq, hkv in paper_layouts(16):
            add(f"B d{d} N32k causal", name, hq, hkv, d, 32768, True, "1.5x peer", bwd=True)
    for d, layouts in ((64, [("mha", 16, 16), ("sqa", 8, 4), ("xsqa", 4, 4)]),
                       (128, [("mha", 32, 32), ("sqa", 16, 8), ("xsqa", 8, 8)])):
        for causal in (True, False):
            for name, hq, hkv in layouts:
                add(f"C d{d} N32k {'causal' if causal else 'non-causal'}", name, hq, hkv, d,
                    32768, causal, "0.8x cuDNN", bwd=True)
    for name, hq, hkv in [("mha", 32, 32), ("xsqa", 8, 8)]:
        add("D d128 N4k causal few heads", name, hq, hkv, 128, 4096, True,
            "xSQA >= 85% of own MHA rate")
    for name, hq, hkv in [("rsqa", 4, 8), ("ssqa-equiv", 8, 8)]:
        add("E rSQA vs H_kv query heads d64 N32k causal", name, hq, hkv, 64, 32768, True,
            "rSQA time <= equivalent", bwd=True)
    return c


def verdicts(rows: list) -> None:
    """Marks each row's target as met or not, in plain words."""
    by = {}
    for r in rows:
        by.setdefault(r["group"], []).append(r)
    for group, rs in by.items():
        for r in rs:
            if "ours_ms" not in r:
                r["verdict"] = "FAILED to run"
                continue
            s = r.get("speedup_vs_best_peer")
            if group.startswith("A"):
                r["verdict"] = _met(s is not None and s >= 2.0, f"{s:.2f}x peer" if s else "no peer")
            elif group.startswith("B"):
                r["verdict"] = _met(s is not None and s >= 1.5, f"{s:.2f}x peer" if s else "no peer")
            elif group.startswith("C"):
                sc = r.get("speedup_vs_cudnn")
                r["verdict"] = _met(sc is not None and sc >= 0.8, f"{sc:.2f}x cuDNN" if sc else "no cuDNN")
            elif group.startswith("D"):
                mha = next((x for x in rs if x["name"] == "mha" and "ours_tflops" in x), None)
                if r["name"] == "mha" or mha is None:
                    r["verdict"] = "reference row"
                else:
                    frac = r["ours_tflops"] / mha["ours_tflops"]
                    r["verdict"] = _met(frac >= 0.85, f"{100 * frac:.0f}% of own MHA rate")
            elif group.startswith("E"):
                eq = next((x for x in rs if x["name"] != "rsqa" and "ours_ms" in x), None)
                if r["name"] != "rsqa" or eq is None:
                    r["verdict"] = "reference row"
                else:
                    ratio = r["ours_ms"] / eq["ours_ms"]
                    r["verdict"] = _met(ratio <= 1.02, f"{ratio:.2f}x the equivalent's time")
            elif group.startswith("F"):
                pct = r.get("ours_pct_copy_bw", 0.0)
                r["verdict"] = _met(pct >= 70.0, f"{pct:.0f}% of copy BW")


def fb_verdicts(rows: list) -> None:
    """Targets of the forward+backward rows (groups B, C, E)."""
    for r in rows:
        if not r.get("bwd"):
            continue
        if "ours_fb_ms" not in r:
            r["fb_verdict"] = "FAILED to run"
            continue
        s, sc = r.get("fb_speedup_vs_best_peer"), r.get("fb_speedup_vs_cudnn")
        g = r["group"]
        if g.startswith("B"):
            r["fb_verdict"] = _met(s is not None and s >= 1.5, f"{s:.2f}x peer" if s else "no peer")
        elif g.startswith("C"):
            r["fb_verdict"] = _met(sc is not None and sc >= 0.8, f"{sc:.2f}x cuDNN" if sc else "no cuDNN")
        elif g.startswith("E"):
            eq = next((x for x in rows if x["group"] == g and x["name"] != "rsqa" and "ours_fb_ms" in x), None)
            if r["name"] != "rsqa" or eq is None:
                r["fb_verdict"] = "reference row"
            else:
                ratio = r["ours_fb_ms"] / eq["ours_fb_ms"]
                r["fb_verdict"] = _met(ratio <= 1.02, f"{ratio:.2f}x the equivalent's time")


def _met(ok: bool, what: str) -> str:
    return ("MET: " if ok else "NOT MET: ") + what


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def markdown(meta: dict, rows: list) -> str:
    lines = [f"# sqa CUDA attention vs PyTorch SDPA ({meta['gpu']}, {meta['date']})", "",
             f"commit {meta['commit']}; torch {meta['torch']}, cuDNN {meta['cudnn']}; bf16; "
             f"in-run bf16 matmul peak {meta['ceilings']['bf16_matmul_tflops']:.0f} TFLOP/s, "
             f"copy {meta['ceilings']['copy_TBps']:.2f} TB/s (read+write).", "",
             "## Forward", "",
             "| group | layout | H_q/H_kv | d | N_q/N_k | ours ms | ours TFLOP/s | % peak | "
             "base/ilp/occ/pipe TFLOP/s | FA2 TFLOP/s | cuDNN TFLOP/s | vs best peer | err vs peer | target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['group']} | {r['name']} | {r['hq']}/{r['hkv']} | {r['d']} | {r['nq']}/{r['nk']} | "
            f"{fmt(r.get('ours_ms'), '.3f')} | {fmt(r.get('ours_tflops'))} | "
            f"{fmt(r.get('ours_pct_peak'))} | "
            f"{'/'.join(fmt(r.get(f'ours_{v}_tflops'), '.0f') for v in VARIANTS)} | "
            f"{fmt(r.get('fa2_tflops'))} | "
            f"{fmt(r.get('cudnn_tflops'))} | {fmt(r.get('speedup_vs_best_peer'), '.2f')}x | "
            f"{fmt(r.get('rel_err_vs_peer'), '.1e')} | {r.get('verdict', '')} |")
    lines += ["", "## Forward + backward (TFLOP/s over 3.5x the forward FLOPs; default = dQ by fp32 reductions)", "",
              "| group | layout | H_q/H_kv | d | ours ms | ours TFLOP/s | % peak | "
              "deterministic TFLOP/s | FA2 TFLOP/s | "
              "cuDNN TFLOP/s | vs best peer | dq/dk/dv err vs FA2 | target |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.get("bwd"):
            continue
        pct = (100 * r["ours_fb_tflops"] / r["peak"]) if "ours_fb_tflops" in r else None
        errs = "/".join(fmt(r.get(f"rel_err_{n}_vs_peer"), ".1e") for n in ("dq", "dk", "dv"))
        lines.append(
            f"| {r['group']} | {r['name']} | {r['hq']}/{r['hkv']} | {r['d']} | "
            f"{fmt(r.get('ours_fb_ms'), '.3f')} | {fmt(r.get('ours_fb_tflops'))} | {fmt(pct)} | "
            f"{fmt(r.get('ours_fb_det_tflops'))} | "
            f"{fmt(r.get('fa2_fb_tflops'))} | {fmt(r.get('cudnn_fb_tflops'))} | "
            f"{fmt(r.get('fb_speedup_vs_best_peer'), '.2f')}x | {errs} | {r.get('fb_verdict', '')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default=os.environ.get("SQA_LIBRARY", "build-cuda/src/capi/libsqa.so"))
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    # "ours" in this table is this project's kernels: the targets of groups A-F are the own
    # kernel's. The default path routes d >= 64 prefill to cuDNN; bench_cudnn.py measures it.
    os.environ.setdefault("SQA_CUDA_BACKEND", "own")
    lib = load_lib(a.lib)
    if not lib.sqa_cuda_available():
        print("sqa reports no CUDA device", file=sys.stderr)
        return 1
    commit = os.environ.get("SQA_COMMIT") or build_commit(lib)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version(), "commit": commit or "unknown",
            "peer": "torch SDPA FA2 and cuDNN backends, same tensors, same process",
            "sqa_cuda_backend": os.environ["SQA_CUDA_BACKEND"]}
    meta["ceilings"] = ceilings()
    print(json.dumps(meta), flush=True)
    rows = []
    for cfg in configs(a.quick):
        if a.only and not any(part in cfg["group"] for part in a.only.split(",")):
            continue
        row = run_config(lib, cfg, meta["ceilings"], a.quick)
        rows.append(row)
        print(json.dumps(row), flush=True)
    verdicts(rows)
    fb_verdicts(rows)
    for r in rows:
        r["peak"] = meta["ceilings"]["bf16_matmul_tflops"]
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "bench.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    md = markdown(meta, rows)
    with open(os.path.join(a.out, "bench.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
