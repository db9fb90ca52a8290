#!/usr/bin/env python3
"""Turns the rows of `sqa bench attention --json` into the result files of bench/cpu/run.sh:
a JSON record (date, machine, commit, in-run peers, acceptance checks, rows) and a Markdown
page with the same tables. Standard library only."""
import argparse
import json
import sys


def acceptance(rows, heads):
    """The issue-2 acceptance rules, evaluated on the rows (N = largest fwd/bwd N)."""
    checks = []
    for p, floor in (("fwd", 50.0), ("bwd", 30.0)):
        sel = [r for r in rows if r["pass"] == p and r["dtype"] == "f32"]
        if not sel:
            continue
        n = max(r["n"] for r in sel)
        for r in sel:
            if r["n"] == n:
                checks.append({"rule": f"{p} % of sgemm >= {floor:g}", "variant": r["variant"],
                               "n": n, "value": r["pct_of_sgemm"],
                               "ok": r["pct_of_sgemm"] >= floor})
        for r in sel:
            if r["n"] == n and r["variant"] in ("sqa", "ssqa", "xsqa"):
                need = 0.9 * heads / r["hq"]
                got = r["speedup_vs_mha"]
                checks.append({"rule": f"{p} speed-up vs MHA >= 0.9*H/H_q = {need:.2f}",
                               "variant": r["variant"], "n": n, "value": got,
                               "ok": got is not None and got >= need})
    for r in rows:
        if r["pass"] == "decode":
            checks.append({"rule": "decode % of memcpy >= 50", "variant": r["variant"],
                           "n": r["n"], "value": r["pct_of_memcpy"],
                           "ok": r["pct_of_memcpy"] >= 50.0})
    return checks


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main():
    ap = argparse.ArgumentParser()
    for a in ("--rows", "--info", "--machine", "--command", "--json", "--md"):
        ap.add_argument(a, required=True)
    ap.add_argument("--heads", type=int, required=True)
    a = ap.parse_args()
    with open(a.rows) as f:
        rows = json.load(f)
    with open(a.info) as f:
        info = f.read()
    if not rows:
        sys.exit("report.py: no rows")
    r0 = rows[0]
    peers = {"sgemm_gflops": r0["sgemm_gflops"], "sgemm_size": r0["sgemm_size"],
             "blas_core": r0["blas_core"], "memcpy_gbps": r0["memcpy_gbps"],
             "memcpy_counts": r0["memcpy_counts"], "threads": r0["threads"]}
    checks = acceptance(rows, a.heads)
    record = {"date": r0["date"], "machine": a.machine, "cpu": r0["cpu"], "commit": r0["commit"],
              "simd_path": r0["simd_path"], "command": a.command, "timing": r0["timing"],
              "peers": peers, "acceptance": checks, "rows": rows, "sqa_info": info}
    with open(a.json, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")

    md = [f"# CPU attention benchmark, {r0['date']}", "",
          f"- machine: {a.machine}", f"- commit: {r0['commit']}",
          f"- attention SIMD path: {r0['simd_path']}, {r0['threads']} threads",
          f"- in-run sgemm peer: {peers['sgemm_gflops']:.1f} GFLOP/s "
          f"(OpenBLAS {peers['blas_core']}, {peers['sgemm_size']}^3, best of runs)",
          f"- in-run memcpy peer: {peers['memcpy_gbps']:.1f} GB/s ({peers['memcpy_counts']})",
          f"- time: {r0['timing']}; command: `{a.command}`", ""]
    for p, title in (("fwd", "Forward"), ("bwd", "Backward"), ("decode", "Decode (N_q = 1)")):
        sel = [r for r in rows if r["pass"] == p]
        if not sel:
            continue
        md.append(f"## {title}, H = {r0['h']}, d = {r0['d']}, {r0['dtype']}")
        md.append("")
        head = "| variant | H_q | H_kv | N | ms | GFLOP/s | % sgemm | vs MHA |"
        rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
        if p == "decode":
            head += " GB/s | % memcpy |"
            rule += "---:|---:|"
        md += [head, rule]
        for r in sel:
            line = (f"| {r['variant']} | {r['hq']} | {r['hkv']} | {r['n']} | "
                    f"{r['seconds'] * 1e3:.3f} | {r['gflops']:.1f} | {r['pct_of_sgemm']:.1f} | "
                    f"{fmt(r['speedup_vs_mha'], '.2f')}x |")
            if p == "decode":
                line += f" {r['gbps']:.1f} | {r['pct_of_memcpy']:.1f} |"
            md.append(line)
        md.append("")
    md += ["## Acceptance (issue 2)", "", "| rule | variant | N | value | ok |",
           "|---|---|---:|---:|---|"]
    for c in checks:
        md.append(f"| {c['rule']} | {c['variant']} | {c['n']} | {fmt(c['value'], '.2f')} | "
                  f"{'yes' if c['ok'] else 'NO'} |")
    md.append("")
    with open(a.md, "w") as f:
        f.write("\n".join(md))
    failed = [c for c in checks if not c["ok"]]
    print(f"acceptance: {len(checks) - len(failed)}/{len(checks)} checks pass")
    for c in failed:
        print(f"  NO: {c['rule']} ({c['variant']}, N={c['n']}): {fmt(c['value'], '.2f')}")


if __name__ == "__main__":
    main()
