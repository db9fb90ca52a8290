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
import random
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attention import Args, DenseProblem, build_commit, ceilings, load_lib  # noqa: E402

# SQA_CUDA_BACKEND values (None: unset); "cudnn_composite" is the cuDNN backend held to the
# composite forward graph (SQA_CUDNN_FWD_GRAPH=composite), to show what the unified one changes.
PATHS = {"own": "own", "cudnn_backend": "cudnn", "cudnn_composite": ("cudnn", "composite"),
         "default": None}
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
    """Context: SQA_CUDA_BACKEND=value for the calls inside (None: unset, the default path); a
    (backend, graph) pair also sets SQA_CUDNN_FWD_GRAPH=graph."""
    backend, graph = value if isinstance(value, tuple) else (value, None)
    names = ("SQA_CUDA_BACKEND", "SQA_CUDNN_FWD_GRAPH")

    class _Env:
        def __enter__(self):
            self.old = {n: os.environ.pop(n, None) for n in names}
            for n, v in zip(names, (backend, graph)):
                if v is not None:
                    os.environ[n] = v

        def __exit__(self, *exc):
            for n in names:
                os.environ.pop(n, None)
                if self.old[n] is not None:
                    os.environ[n] = self.old[n]
    return _Env()


def _filler():
    """The same ~20 ms of bf16 matmuls before every timed call, so each call starts from the same
    GPU state (clocks, power) whatever ran before it."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def run():
        for _ in range(14):
            torch.mm(a, a)
    return run


def round_robin(fns: dict, warm: int, rep: int, row: dict, suffix: str) -> dict:
    """Median seconds per callable, timed in turns with CUDA events after warm-up; a callable
    that raises is reported in row[name + suffix + '_error'] and left out.

    Order bias: with a fixed cyclic order (rotated each round) one path always ran right after
    the same other one, and the GPU's clock and power state after it carried over: in
    2026-11-29-h200-cudnn-unified SDPA-cuDNN, always timed right after FA2, ran 5-10% faster than
    sqa's cuDNN path with the very same kernels, which cudnn_kernel_probe.py then timed at the
    same speed (2026-11-29-h200-bwd-wgmma2sched). So every timed call now follows the same
    filler, and the order is a fresh permutation each round."""
    live = {}
    for name, fn in fns.items():
        try:
            for _ in range(warm):
                fn()
            torch.cuda.synchronize()
            live[name] = fn
        except Exception as ex:  # report, keep going
            row[f"{name}{suffix}_error"] = str(ex).split("\n")[0][:300]
    times = {name: [] for name in live}
    names = list(live)
    filler = _filler()
    order = random.Random(len(names) * 1000 + rep)
    for _ in range(rep):
        order.shuffle(names)
        for name in names:
            fn = live[name]
            filler()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times[name].append(start.elapsed_time(end) / 1e3)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def run_config(lib, cfg: dict, peak: float, quick: bool) -> dict:
    d, hq, hkv, n, causal = cfg["d"], cfg["hq"], cfg["hkv"], cfg["n"], cfg["causal"]
    pb = DenseProblem(lib, hq, hkv, d, n, causal)
    q, k, v, out, dout, dq, dk, dv = pb.q, pb.k, pb.v, pb.out, pb.dout, pb.dq, pb.dk, pb.dv
    args, bargs, flops, fb_flops = pb.args, pb.bargs, pb.flops, pb.fwdbwd_flops
    row = dict(cfg, flops=flops, fwdbwd_flops=fb_flops)
    warm, rep = (1, 3) if quick else (2, 9)

    def fwd():
        if lib.sqa_attention_forward(ctypes.byref(args)) != 0:
            raise RuntimeError(lib.sqa_last_error().decode())

    # Inference: the same call without an lse buffer (what sqa.torch does under no_grad).
    inf_args = type(args).from_buffer_copy(args)
    inf_args.lse = None

    def fwd_inf():
        if lib.sqa_attention_forward(ctypes.byref(inf_args)) != 0:
            raise RuntimeError(lib.sqa_last_error().decode())

    def fb():
        fwd()
        if lib.sqa_attention_backward(ctypes.byref(bargs)) != 0:
            raise RuntimeError(lib.sqa_last_error().decode())

    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    gqa = hq != hkv
    qg, kg, vg = (x.detach().clone().requires_grad_(True) for x in (qt, kt, vt))
    go = dout.transpose(1, 2)

    def peer_fwd(backend):
        def fn():
            with sdpa_kernel([backend]), torch.no_grad():
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=gqa)
        return fn

    def peer_train_fwd(backend):
        # The training forward: inputs that need gradients, so SDPA keeps its logsumexp.
        def fn():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal, enable_gqa=gqa)
        return fn

    def peer_fb(backend):
        def fn():
            with sdpa_kernel([backend]):
                o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal, enable_gqa=gqa)
                o.backward(go)
        return fn

    def ours(value, fn):
        def call():
            with with_backend(value):
                fn()
        return call

    # Every implementation timed in turns (round robin), so clock drift hits all alike.
    # Forms: "_inf" inference (no lse on either side), "" the training forward (lse kept on
    # both sides), "_fb" forward + backward.
    inf_fns = {p: peer_fwd(b) for p, b in PEERS.items()}
    inf_fns.update({p: ours(v, fwd_inf) for p, v in PATHS.items()})
    fwd_fns = {p: peer_train_fwd(b) for p, b in PEERS.items()}
    fwd_fns.update({p: ours(v, fwd) for p, v in PATHS.items()})
    fb_fns = {p: peer_fb(b) for p, b in PEERS.items()}
    fb_fns.update({p: ours(v, fb) for p, v in PATHS.items()})
    for suffix, fns, r in (("_inf", inf_fns, rep), ("", fwd_fns, rep),
                           ("_fb", fb_fns, max(3, rep - 2))):
        for name, seconds in round_robin(fns, warm, r, row, suffix).items():
            row[f"{name}{suffix}_ms"] = seconds * 1e3

    # Correctness: each path of ours against SDPA-FA2 (outputs and gradients, fresh NaN fill).
    ref = ref_grads = None
    try:
        ref = peer_fwd(PEERS["fa2"])().transpose(1, 2).float()
        qg.grad = kg.grad = vg.grad = None
        peer_fb(PEERS["fa2"])()
        ref_grads = [x.grad.transpose(1, 2).float() for x in (qg, kg, vg)]
    except Exception as ex:
        row["reference_error"] = str(ex).split("\n")[0][:200]
    for path, value in PATHS.items():
        with with_backend(value):
            try:
                row[f"{path}_backend_fwd"] = (lib.sqa_cuda_attention_backend(ctypes.byref(args), 0)
                                              or b"?").decode()
                row[f"{path}_backend_bwd"] = (lib.sqa_cuda_attention_backend(ctypes.byref(args), 1)
                                              or b"?").decode()
                for form, fn in (("_inf", fwd_inf), ("", fwd)):
                    out.fill_(float("nan"))
                    fn()
                    torch.cuda.synchronize()
                    if ref is not None:
                        row[f"{path}{form}_err"] = float((out.float() - ref).norm() / ref.norm())
                for x in (dq, dk, dv):
                    x.fill_(float("nan"))
                fb()
                torch.cuda.synchronize()
                if ref_grads is not None:
                    row[f"{path}_grad_err"] = max(float((m.float() - r).norm() / r.norm())
                                                  for m, r in zip((dq, dk, dv), ref_grads))
            except Exception as ex:
                row[f"{path}_error"] = str(ex)[:300]
    for suffix, fl in (("_inf", flops), ("", flops), ("_fb", fb_flops)):
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
    del pb, q, k, v, out, dout, dq, dk, dv, ref, ref_grads, qt, kt, vt, qg, kg, vg
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
    for suffix, title in (("_inf", "Forward, inference (no lse asked for; SDPA under no_grad)"),
                          ("", "Forward, training (lse kept; SDPA with inputs that need grad)"),
                          ("_fb", "Forward + backward")):
        lines += [f"## {title}", "",
                  "| d | mask | layout | H_q/H_kv | own TF/s | cuDNN-backend TF/s | (composite "
                  "graph) | default TF/s (backend) | % peak | FA2 TF/s | SDPA-cuDNN TF/s | own / "
                  "best | default / best | err (own/cudnn/composite/default) | >= 0.95? |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ratio = r.get(f"default{suffix}_vs_best_peer")
            err_key = {"_fb": "_grad_err", "_inf": "_inf_err"}.get(suffix, "_err")
            errs = "/".join(fmt(r.get(f"{p}{err_key}"), ".0e") for p in PATHS)
            backend = r.get("default_backend_bwd" if suffix == "_fb" else "default_backend_fwd", "?")
            lines.append(
                f"| {r['d']} | {'causal' if r['causal'] else 'none'} | {r['name']} | "
                f"{r['hq']}/{r['hkv']} | {fmt(r.get(f'own{suffix}_tflops'), '.0f')} | "
                f"{fmt(r.get(f'cudnn_backend{suffix}_tflops'), '.0f')} | "
                f"{fmt(r.get(f'cudnn_composite{suffix}_tflops'), '.0f')} | "
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
    commit = os.environ.get("SQA_COMMIT") or build_commit(lib)
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
