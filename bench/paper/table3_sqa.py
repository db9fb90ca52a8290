#!/usr/bin/env python3
"""Table 3 (issue 5), sqa side: whole dense-model forward (and a training step) on the GPU for
every variant at the paper's (length, batch) pairs, through `sqa bench model`.

    python3 bench/paper/table3_sqa.py --sqa build/sqa --out bench/results/DATE-table3-sqa.json
    python3 bench/paper/table3_sqa.py --sqa build/sqa --sizes 1024x128 --train-sizes 1024x128 ...

Writes one JSON in the schema of `bench/torch_reference.py bench` (results: variant, kind
forward|train, seqlen, batch, median_s, tokens_per_s, mfu), so bench/paper/report.py puts both
in one table. RoPE has no learned positions, so each config's max_position_embeddings is raised
to the longest length (in a temporary copy), as the PyTorch side does.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PAPER_SIZES = "1024x128,4096x32,32768x4,131072x1,200000x1"
VARIANTS = "xsqa,sqa,ssqa,swsqa,mqa,gqa,mha,xsmqa"


def sizes(text, what):
    out = []
    for item in filter(None, text.split(",")):
        try:
            t, b = (int(x) for x in item.lower().split("x"))
        except ValueError:
            sys.exit(f"--{what}: '{item}' must be LENGTHxBATCH, e.g. 1024x128")
        if t <= 0 or b <= 0:
            sys.exit(f"--{what}: '{item}' must have positive length and batch")
        out.append((t, b))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sqa", default=os.path.join(ROOT, "build", "sqa"))
    p.add_argument("--out", required=True, help="JSON file (rewritten after every cell)")
    p.add_argument("--variants", default=VARIANTS, help="configs/paper/dense-<variant>.json")
    p.add_argument("--sizes", default=PAPER_SIZES, help="forward sizes, LENGTHxBATCH list")
    p.add_argument("--train-sizes", default="1024x128", help="training-step sizes ('' = none)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    a = p.parse_args()
    fwd, train = sizes(a.sizes, "sizes"), sizes(a.train_sizes, "train-sizes")
    if not fwd and not train:
        sys.exit("--sizes and --train-sizes are both empty: nothing to time")
    longest = max(t for t, _ in fwd + train)
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip().splitlines()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    report = {"tool": "bench/paper/table3_sqa.py (sqa bench model)",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "gpu": gpu[0] if gpu else "unknown", "commit": commit,
              "settings": {"dtype": "bf16 activations and matmuls, fp32 accumulation",
                           "forward_mode": "train (dropout on), no loss",
                           "warmup": a.warmup, "iters": a.iters, "timing": "median"},
              "results": []}

    def save():
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, a.out)

    tmpdir = tempfile.mkdtemp(prefix="table3-")
    for v in filter(None, a.variants.split(",")):
        path = os.path.join(ROOT, "configs", "paper", f"dense-{v}.json")
        if not os.path.isfile(path):
            sys.exit(f"--variants: no config {path}")
        c = json.load(open(path))
        c["max_position_embeddings"] = max(c.get("max_position_embeddings", 0), longest)
        cfg = os.path.join(tmpdir, f"dense-{v}.json")
        json.dump(c, open(cfg, "w"))
        cells = [("forward", t, b) for t, b in fwd] + [("train", t, b) for t, b in train]
        for kind, t, b in cells:
            js = os.path.join(tmpdir, f"{v}-{kind}-{t}x{b}.json")
            cmd = [a.sqa, "bench", "model", "--config", cfg, "--device", "cuda", "--batch",
                   str(b), "--seq", str(t), "--warmup", str(a.warmup), "--iters", str(a.iters),
                   "--json", js] + (["--train"] if kind == "train" else [])
            entry = {"variant": v, "kind": kind, "seqlen": t, "batch": b, "config": path}
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                entry["error"] = (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]
                print(f"{v:6s} {kind:8s} {t:>7d}x{b:<4d} ERROR {entry['error']}", flush=True)
            else:
                r = json.load(open(js))
                part = r[kind]
                entry.update(median_s=part["median_s"], min_s=part["min_s"],
                             tokens_per_s=part["tokens_per_s"], mfu=part["mfu"],
                             parameters=r["parameters"])
                print(f"{v:6s} {kind:8s} {t:>7d}x{b:<4d} {part['median_s'] * 1e3:9.2f} ms "
                      f"{part['tokens_per_s'] / 1e6:8.3f} M tok/s  MFU {part['mfu']:.1%}",
                      flush=True)
            report["results"].append(entry)
            save()
    return 1 if any("error" in r for r in report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
