#!/usr/bin/env python3
"""d = 64 / 128 group of issue 3 with the cuDNN backend: for each config, in the same process and
on the same tensors, sqa's own kernels (SQA_CUDA_BACKEND=own), sqa's cuDNN backend (=cudnn), the
library's default path (unset: automatic routing; the chosen backend is reported), and PyTorch
SDPA with its FA2 and cuDNN backends. Forward and forward+backward; ratios to the best peer.

Usage: python3 bench/gpu/bench_cudnn.py --lib .../libsqa.so --out DIR [--quick]
Writes DIR/cudnn.json and DIR/cudnn.md.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attention import (SQA_BF16, SQA_DEVICE_CUDA, Args, BackwardArgs, Spec,  # noqa: E402
                             ceilings, load_lib, median_time)

PATHS = {"own": "own", "cudnn_backend": "cudnn", "default": None}  # SQA_CUDA_BACKEND values
PEERS = {"fa2": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION}


def configs(quick: bool) -> list:
    n = 8192 if quick else 32768
    out = []
    for d, layouts in ((64, [("mha", 16, 16), ("sqa", 8, 4), ("xsqa", 4, 4)]),
                       (128, [("mha", 32, 32), ("sqa", 16, 8), ("xsqa", 8, 8)])):
        for causal in (True, False):
            for name, hq, hkv in layouts:
                out.append(dict(d=d, causal=causal, name=name, hq=hq, hkv=hkv, n=n))
    return out


def with_backend(value):
    """Context: SQA_CUDA_BACKEND=value for the calls inside (None: unset, the default path)."""
    class _Env:
        def __enter__(self):
            self.old = os.environ.pop("SQA_CUDA_BACKEND", None)
            if value is not None:
                os.environ["SQA_CUDA_BACKEND"] = value

        def __exit__(self, *exc):
            os.environ.pop("SQA_CUDA_BACKEND", None)
            if self.old is not None:
                os.environ["SQA_CUDA_BACKEND"] = self.old
    return _Env()


def run_config(lib, cfg: dict, peak: float, quick: bool) -> dict:
    d, hq, hkv, n, causal = cfg["d"], cfg["hq"], cfg["hkv"], cfg["n"], cfg["causal"]
    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(1, n, hq, d, device=dev, dtype=dt)
    k = torch.randn(1, n, hkv, d, device=dev, dtype=dt)
    v = torch.randn(1, n, hkv, d, device=dev, dtype=dt)
    out = torch.empty(1, n, hq, d, device=dev, dtype=dt)
    lse = torch.empty(1, hq, n, device=dev, dtype=torch.float32)
    dout = torch.randn_like(out)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    spec = Spec(hq, hkv, d, 0.0, -1, 0 if causal else -1)
    args = Args()
    args.spec, args.dtype, args.device = spec, SQA_BF16, SQA_DEVICE_CUDA
    args.stream = torch.cuda.current_stream().cuda_stream
    args.batch, args.seqlen_q, args.seqlen_k = 1, n, n
    args.q, args.k, args.v, args.out, args.lse = (x.data_ptr() for x in (q, k, v, out, lse))
    bargs = BackwardArgs()
    bargs.forward = args
    bargs.dout, bargs.dq, bargs.dk, bargs.dv = (x.data_ptr() for x in (dout, dq, dk, dv))
    flops = lib.sqa_attention_forward_flops(ctypes.byref(spec), 1, n, n)
    fb_flops = flops + lib.sqa_attention_backward_flops(ctypes.byref(spec), 1, n, n)
    row = dict(cfg, flops=flops, fwdbwd_flops=fb_flops)
    warm, rep = (1, 3) if quick else (2, 5)

    def fwd():
        if lib.sqa_attention_forward(ctypes.byref(args)) != 0:
            raise RuntimeError(lib.sqa_last_error().decode())

    def fb():
        fwd()
        if lib.sqa_attention_backward(ctypes.byref(bargs)) != 0:
            raise RuntimeError(lib.sqa_last_error().decode())

    # Peers first: their output and gradients are the correctness yardstick for ours.
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    gqa = hq != hkv
    ref = ref_grads = None
    for peer, backend in PEERS.items():
        def pf():
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=gqa)
        qg, kg, vg = (x.detach().clone().requires_grad_(True) for x in (qt, kt, vt))
        go = dout.transpose(1, 2)

        def pfb():
            o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal, enable_gqa=gqa)
            o.backward(go)
        try:
            with sdpa_kernel([backend]):
                with torch.no_grad():
                    row[f"{peer}_ms"] = median_time(pf, warm, rep) * 1e3
                    if ref is None:
                        ref = pf().transpose(1, 2).float()
                row[f"{peer}_fb_ms"] = median_time(pfb, 1, rep) * 1e3
                if ref_grads is None:
                    qg.grad = kg.grad = vg.grad = None
                    pfb()
                    ref_grads = [x.grad.transpose(1, 2).float() for x in (qg, kg, vg)]
        except Exception as ex:  # report, keep going
            row[f"{peer}_error"] = str(ex).split("\n")[0][:200]
        del qg, kg, vg
    for path, value in PATHS.items():
        with with_backend(value):
            try:
                row[f"{path}_backend_fwd"] = (lib.sqa_cuda_attention_backend(ctypes.byref(args), 0)
                                              or b"?").decode()
                row[f"{path}_backend_bwd"] = (lib.sqa_cuda_attention_backend(ctypes.byref(args), 1)
                                              or b"?").decode()
                row[f"{path}_ms"] = median_time(fwd, warm, rep) * 1e3
                out.fill_(float("nan"))
                fwd()
                torch.cuda.synchronize()
                if ref is not None:
                    row[f"{path}_err"] = float((out.float() - ref).norm() / ref.norm())
                row[f"{path}_fb_ms"] = median_time(fb, 1, rep) * 1e3
                for x in (dq, dk, dv):
                    x.fill_(float("nan"))
                fb()
                torch.cuda.synchronize()
                if ref_grads is not None:
                    row[f"{path}_grad_err"] = max(float((m.float() - r).norm() / r.norm())
                                                  for m, r in zip((dq, dk, dv), ref_grads))
            except Exception as ex:
                row[f"{path}_error"] = str(ex)[:300]
    for suffix, fl in (("", flops), ("_fb", fb_flops)):
        peers = [row[f"{p}{suffix}_ms"] for p in PEERS if f"{p}{suffix}_ms" in row]
        best = min(peers) if peers else None
        row[f"best_peer{suffix}_ms"] = best
        for path in list(PATHS) + list(PEERS):
            ms = row.get(f"{path}{suffix}_ms")
            if ms is None:
                continue
            row[f"{path}{suffix}_tflops"] = fl / (ms / 1e3) / 1e12
            row[f"{path}{suffix}_pct_peak"] = 100 * row[f"{path}{suffix}_tflops"] / peak
            if best:
                row[f"{path}{suffix}_vs_best_peer"] = best / ms
    del q, k, v, out, lse, dout, dq, dk, dv, ref, ref_grads, qt, kt, vt
    torch.cuda.empty_cache()
    return row


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def markdown(meta: dict, rows: list) -> str:
    lines = [f"# d = 64 / 128, N = {rows[0]['n'] if rows else '?'}: own kernels, cuDNN backend, "
             f"default path, SDPA ({meta['gpu']}, {meta['date']})", "",
             f"commit {meta['commit']}; torch {meta['torch']}, cuDNN {meta['cudnn']} (torch's, "
             f"also what libsqa.so loads in this process); bf16, batch 1; in-run bf16 matmul "
             f"peak {meta['ceilings']['bf16_matmul_tflops']:.0f} TFLOP/s. Ratios: best peer "
             "time / our time (>= 0.95 is the acceptance for the default path).", ""]
    for suffix, title in (("", "Forward"), ("_fb", "Forward + backward")):
        lines += [f"## {title}", "",
                  "| d | mask | layout | H_q/H_kv | own TF/s | cuDNN-backend TF/s | default TF/s "
                  "(backend) | % peak | FA2 TF/s | SDPA-cuDNN TF/s | own / best | default / best "
                  "| err (own/cudnn/default) | >= 0.95? |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ratio = r.get(f"default{suffix}_vs_best_peer")
            err_key = "_err" if suffix == "" else "_grad_err"
            errs = "/".join(fmt(r.get(f"{p}{err_key}"), ".0e") for p in PATHS)
            backend = r.get("default_backend_fwd" if suffix == "" else "default_backend_bwd", "?")
            lines.append(
                f"| {r['d']} | {'causal' if r['causal'] else 'none'} | {r['name']} | "
                f"{r['hq']}/{r['hkv']} | {fmt(r.get(f'own{suffix}_tflops'), '.0f')} | "
                f"{fmt(r.get(f'cudnn_backend{suffix}_tflops'), '.0f')} | "
                f"{fmt(r.get(f'default{suffix}_tflops'), '.0f')} ({backend}) | "
                f"{fmt(r.get(f'default{suffix}_pct_peak'), '.0f')} | "
                f"{fmt(r.get(f'fa2{suffix}_tflops'), '.0f')} | "
                f"{fmt(r.get(f'sdpa_cudnn{suffix}_tflops'), '.0f')} | "
                f"{fmt(r.get(f'own{suffix}_vs_best_peer'))}x | {fmt(ratio)}x | {errs} | "
                f"{'MET' if ratio is not None and ratio >= 0.95 else 'NOT MET'} |")
        lines.append("")
    errors = [f"- {r['name']} d{r['d']} {'causal' if r['causal'] else 'none'}: {k} = {v}"
              for r in rows for k, v in r.items() if k.endswith("_error")]
    if errors:
        lines += ["## Errors", ""] + errors + [""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    lib = load_lib(a.lib)
    lib.sqa_cuda_attention_backend.restype = ctypes.c_char_p
    lib.sqa_cuda_attention_backend.argtypes = [ctypes.POINTER(Args), ctypes.c_int32]
    commit = os.environ.get("SQA_COMMIT") or subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version(), "commit": commit or "unknown",
            "peer": "torch SDPA FA2 and cuDNN backends, same tensors, same process",
            "ceilings": ceilings()}
    print(json.dumps(meta), flush=True)
    rows = []
    for cfg in configs(a.quick):
        row = run_config(lib, cfg, meta["ceilings"]["bf16_matmul_tflops"], a.quick)
        rows.append(row)
        print(json.dumps(row), flush=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "cudnn.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    md = markdown(meta, rows)
    with open(os.path.join(a.out, "cudnn.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
