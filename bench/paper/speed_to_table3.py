#!/usr/bin/env python3
"""Turns one bench/gpu/model_speed.sh run (its speed-json.tgz) into Table 3 result files, so
bench/paper/report.py can show that run's cells: sqa's training step at 1024 x 128 and forward
at 200k from `sqa bench model`, and the PyTorch peer of the same run (torch.compile training,
eager forward). Both sides come from the same device run; nothing is recomputed.

Usage: python3 bench/paper/speed_to_table3.py RUN_DIR/speed-json.tgz [--date YYYY-MM-DD]
       [--results-dir DIR]
Writes DIR/DATE-table3-sqa-speed-h200.json and DATE-table3-torch-speed-h200.json (DIR:
bench/results).
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import sys
import tarfile

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results")


def read_members(path: str) -> dict:
    out = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.endswith(".json"):
                out[os.path.basename(m.name)] = json.load(io.TextIOWrapper(tar.extractfile(m)))
    return out


def sqa_cell(run: dict, kind: str, part: str) -> dict:
    r = run[part]
    name = run["name"]
    if not name.startswith("dense-"):
        raise ValueError(f"{name}: expected a dense paper config")
    return {"variant": name[len("dense-"):], "kind": kind, "seqlen": run["seqlen"],
            "batch": run["batch"], "config": run["config"], "median_s": r["median_s"],
            "min_s": r["min_s"], "tokens_per_s": r["tokens_per_s"], "mfu": r["mfu"],
            "parameters": run["parameters"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("speed_json_tgz")
    ap.add_argument("--date", default="")
    ap.add_argument("--results-dir", default=RESULTS)
    a = ap.parse_args(argv)
    files = read_members(a.speed_json_tgz)
    sqa = []
    for name, run in sorted(files.items()):
        if name.startswith("train-"):
            sqa.append(sqa_cell(run, "train", "train"))
        elif name.startswith("fwd200k-"):
            sqa.append(sqa_cell(run, "forward", "forward"))
    torch_parts = [files[n] for n in ("torch-compile.json", "torch-forward.json") if n in files]
    if not sqa or not torch_parts:
        print(f"{a.speed_json_tgz}: needs train-*/fwd200k-* and torch-*.json files",
              file=sys.stderr)
        return 1
    date = a.date or torch_parts[0]["date"][:10]
    source = os.path.relpath(a.speed_json_tgz, os.path.join(RESULTS, "..", ".."))
    sqa_out = {"tool": "bench/paper/speed_to_table3.py (sqa bench model, model_speed.sh)",
               "date": torch_parts[0]["date"], "gpu": torch_parts[0]["gpu"], "source": source,
               "results": sqa}
    torch_out = dict(torch_parts[0])
    torch_out["source"] = source
    torch_out["results"] = [x for part in torch_parts for x in part["results"]]
    for side, report in (("sqa", sqa_out), ("torch", torch_out)):
        path = os.path.join(a.results_dir, f"{date}-table3-{side}-speed-h200.json")
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {os.path.normpath(path)} ({len(report['results'])} cells)")
    stale = glob.glob(os.path.join(a.results_dir, f"{date}-table3-*.json"))
    print(f"report.py merges {len(stale)} table3 files of {date}; later names replace earlier "
          "cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
