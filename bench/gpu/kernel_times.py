#!/usr/bin/env python3
"""Where a GPU step's time goes: sums Nsight Compute's per-kernel gpu__time_duration over every
launch of each kernel and prints a table (share of the total, time per step, launches per step).

    ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \\
        sqa bench model ... > ncu.csv
    python3 bench/gpu/kernel_times.py ncu.csv --steps 2 [--json out.json]

--steps divides the sums by the number of profiled steps. --from-launch NAME:K skips every
launch before the K-th launch of the kernel whose name contains NAME (e.g. embed_forward:2 skips
`sqa bench model`'s forward-only pass and keeps its training step). Kernel names are shortened
to the function name (templates and arguments dropped) and grouped by it.
"""
import argparse
import csv
import io
import json
import re
import sys


def short_name(name):
    # "void sqa::k::rope<...>(...)" -> "sqa::k::rope"; cuBLAS names stay recognisable.
    name = re.sub(r"^void ", "", name)
    depth, out = 0, []
    for ch in name:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).strip() or name


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv")
    p.add_argument("--steps", type=float, default=1.0)
    p.add_argument("--from-launch", help="NAME:K, start at the K-th launch of kernel NAME")
    p.add_argument("--json")
    a = p.parse_args()
    text = open(a.csv, errors="replace").read()
    start = text.find('"ID"')
    if start < 0:
        sys.exit(f"{a.csv}: no ncu CSV table found (expected a header starting with \"ID\")")
    first_name, first_k = None, 0
    if a.from_launch:
        first_name, _, k = a.from_launch.rpartition(":")
        if not first_name or not k.isdigit() or int(k) < 1:
            sys.exit(f"--from-launch ({a.from_launch}) must be NAME:K with K >= 1")
        first_k = int(k)
    totals, launches = {}, {}
    seen = 0
    for row in csv.DictReader(io.StringIO(text[start:])):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = short_name(row["Kernel Name"])
        if first_name is not None and seen < first_k:
            seen += first_name in name
            if seen < first_k:
                continue
        ns = float(row["Metric Value"].replace(",", ""))
        totals[name] = totals.get(name, 0.0) + ns
        launches[name] = launches.get(name, 0) + 1
    if not totals:
        sys.exit(f"{a.csv}: no gpu__time_duration.sum rows")
    total = sum(totals.values())
    rows = sorted(totals, key=totals.get, reverse=True)
    print(f"total kernel time per step: {total / a.steps / 1e6:.3f} ms "
          f"({sum(launches.values()) / a.steps:.0f} launches)")
    print("| kernel | ms/step | share | launches/step |")
    print("|---|---:|---:|---:|")
    for n in rows:
        print(f"| `{n}` | {totals[n] / a.steps / 1e6:.3f} | {100 * totals[n] / total:.1f}% | "
              f"{launches[n] / a.steps:.0f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"steps": a.steps, "total_ms_per_step": total / a.steps / 1e6,
                       "kernels": [{"name": n, "ms_per_step": totals[n] / a.steps / 1e6,
                                    "launches_per_step": launches[n] / a.steps}
                                   for n in rows]}, f, indent=2)


if __name__ == "__main__":
    main()
