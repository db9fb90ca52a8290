#!/usr/bin/env python3
"""Smoke tests of the `sqa` program: `sqa info`, `sqa bench attention --json` and its option
errors. Standard library only (CI has no numpy guaranteed).

usage: check_cli.py SQA_BINARY MODE WORKDIR     MODE: info | bench | decode | errors | help
"""
import json
import math
import os
import subprocess
import sys

REQUIRED = ["variant", "hq", "hkv", "d", "n", "causal", "seconds", "gflops", "pct_of_sgemm",
            "speedup_vs_mha"]
# (H_q, H_kv) of each preset for baseline H = 16 (paper.md, "Variant family"), written out here
# independently of spec.cpp so that a wrong preset in the program fails the test.
PRESETS_H16 = {"mha": (16, 16), "gqa": (16, 4), "mqa": (16, 1), "sqa": (8, 4),
               "ssqa": (8, 8), "xsqa": (4, 4), "xsmqa": (4, 1), "lsqa": (12, 4),
               "rsqa": (4, 8)}
FAST = ["--sgemm-size", "256", "--memcpy-mib", "16", "--repeat", "2"]

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def close(a, b, rel=1e-6):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


def run(sqa, args):
    p = subprocess.run([sqa] + args, capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def visible_pairs(nq, nk, causal):
    if not causal:
        return nq * nk
    # Bottom-right aligned causal mask: query i sees keys j <= i + (nk - nq).
    return sum(max(0, min(nk, i + (nk - nq) + 1)) for i in range(nq))


def check_rows(rows, d, seqs, passes, causal):
    check(isinstance(rows, list) and rows, "JSON must be a non-empty array of rows")
    expected = {(p, v, n) for p in passes for v in PRESETS_H16 for n in seqs}
    got = set()
    by_key = {}
    for r in rows:
        name = f"row {r.get('pass')}/{r.get('variant')}/n={r.get('n')}"
        for f in REQUIRED:
            check(f in r, f"{name}: missing field '{f}'")
        if any(f not in r for f in REQUIRED):
            continue
        got.add((r.get("pass"), r["variant"], r["n"]))
        by_key[(r.get("pass"), r["variant"], r["n"])] = r
        check((r["hq"], r["hkv"]) == PRESETS_H16.get(r["variant"]),
              f"{name}: (hq, hkv) = ({r['hq']}, {r['hkv']}) is not the preset for H = 16")
        check(r["d"] == d, f"{name}: d = {r['d']}, expected {d}")
        check(r["causal"] is causal, f"{name}: causal = {r['causal']}, expected {causal}")
        check(isinstance(r["seconds"], float) and 0 < r["seconds"] < 600,
              f"{name}: seconds = {r['seconds']} is not a sane time")
        check(r["gflops"] > 0 and math.isfinite(r["gflops"]), f"{name}: gflops = {r['gflops']}")
        # No upper bound: the smoke run's 256^3 sgemm ceiling is tiny and, on a loaded
        # machine, can read far below the kernels' rate; the exact relation is checked below.
        check(r["pct_of_sgemm"] > 0 and math.isfinite(r["pct_of_sgemm"]),
              f"{name}: pct_of_sgemm = {r['pct_of_sgemm']}")
        check(r.get("sgemm_gflops", 0) > 1, f"{name}: sgemm_gflops = {r.get('sgemm_gflops')}")
        if r.get("sgemm_gflops"):
            check(close(r["pct_of_sgemm"], 100 * r["gflops"] / r["sgemm_gflops"]),
                  f"{name}: pct_of_sgemm is not 100 * gflops / sgemm_gflops")
        # FLOPs of the core attention, independently: QK^T and PV, 2 FLOPs per multiply-add.
        nq = r.get("seqlen_q", r["n"])
        fwd = 4.0 * visible_pairs(nq, r["n"], causal) * max(r["hq"], r["hkv"]) * d
        flops = fwd * (2.5 if r.get("pass") == "bwd" else 1.0)
        check(close(r["gflops"], flops / r["seconds"] * 1e-9, 1e-4),
              f"{name}: gflops {r['gflops']} != FLOPs {flops} / seconds {r['seconds']}")
        for f in ("date", "commit", "cpu", "simd_path", "pass", "dtype", "batch"):
            check(f in r, f"{name}: missing context field '{f}'")
    check(got == expected, f"rows present {sorted(got)} differ from expected {sorted(expected)}")
    for (p, v, n), r in by_key.items():
        mha = by_key.get((p, "mha", n))
        if mha is None or r["speedup_vs_mha"] is None:
            check(False, f"{p}/{v}/n={n}: speedup_vs_mha is missing")
            continue
        check(close(r["speedup_vs_mha"], mha["seconds"] / r["seconds"], 1e-6),
              f"{p}/{v}/n={n}: speedup_vs_mha is not MHA seconds / seconds")
    return by_key


def mode_info(sqa, _):
    rc, out, err = run(sqa, ["info"])
    check(rc == 0, f"sqa info exited {rc}: {err}")
    for needle in ("build:", "commit", "sanitizers", "cpu:", "features:", "threads:",
                   "cpu SIMD path", "blas:", "OpenBLAS core", "sgemm self-check", "(ok)",
                   "cuda:"):
        check(needle in out, f"sqa info output lacks '{needle}':\n{out}")
    # On x86 with AVX2 or AVX-512 the core must not be OpenBLAS's slow generic guess.
    if " avx2" in out or "avx512f" in out:
        check("core Prescott" not in out, f"OpenBLAS still on Prescott:\n{out}")
    config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "paper",
                          "dense-sqa.json")
    if os.path.exists(config):
        rc, out, err = run(sqa, ["info", "--config", config])
        check(rc == 0, f"sqa info --config exited {rc}: {err}")
        lines = [l for l in out.splitlines() if l.startswith("parameters:")]
        check(len(lines) == 1 and int(lines[0].split()[1].replace(",", "")) > 0,
              f"sqa info --config prints no parameter count:\n{out}")
        check("H_q=8 H_kv=4" in out, f"dense-sqa layers should be H_q=8 H_kv=4:\n{out}")
    rc, out, err = run(sqa, ["info", "--config", "/nonexistent/config.json"])
    check(rc != 0 and "/nonexistent/config.json" in err, f"info --config missing: {err}")
    rc, out, err = run(sqa, ["info", "--bogus"])
    check(rc != 0 and "unknown option --bogus" in err, f"info --bogus: rc {rc}, stderr {err}")


def mode_bench(sqa, work):
    path = os.path.join(work, "bench.json")
    rc, out, err = run(sqa, ["bench", "attention", "--seq", "64,128", "--head-dim", "16",
                             "--backward", "--json", path] + FAST)
    check(rc == 0, f"bench exited {rc}: {err}\n{out}")
    if rc != 0:
        return
    with open(path) as f:
        rows = json.load(f)
    by_key = check_rows(rows, 16, [64, 128], ["fwd", "bwd"], False)
    check(all(r["speedup_vs_mha"] == 1.0 for (p, v, n), r in by_key.items() if v == "mha"),
          "MHA rows must have speedup_vs_mha 1")
    check("% sgemm" in out and "vs MHA" in out, f"table header missing:\n{out}")


def mode_decode(sqa, work):
    path = os.path.join(work, "decode.json")
    rc, out, err = run(sqa, ["bench", "attention", "--decode", "--seq", "300", "--head-dim", "32",
                             "--causal", "--dtype", "bf16", "--rounds", "2", "--json", path] + FAST)
    check(rc == 0, f"decode bench exited {rc}: {err}\n{out}")
    if rc != 0:
        return
    with open(path) as f:
        rows = json.load(f)
    check_rows(rows, 32, [300], ["decode"], True)
    for r in rows:
        check(r.get("seqlen_q") == 1, f"decode row has seqlen_q {r.get('seqlen_q')}")
        check(r.get("dtype") == "bf16", f"decode row has dtype {r.get('dtype')}")
        # --rounds 2 with --repeat 2: every row timed in both rounds, best over the four runs.
        check(r.get("rounds") == 2 and r.get("repeats") == 4,
              f"decode row has rounds {r.get('rounds')} / repeats {r.get('repeats')}, want 2 / 4")
        kv = 2 * 300 * r["hkv"] * 32 * 2  # K and V, bf16
        check(r.get("kv_bytes") == kv, f"decode kv_bytes {r.get('kv_bytes')} != {kv}")
        check(close(r.get("gbps", 0), kv / r["seconds"] * 1e-9, 1e-4), "decode gbps mismatch")
        check(r.get("memcpy_gbps", 0) > 0, "memcpy_gbps missing")
        check(close(r.get("pct_of_memcpy", 0), 100 * r["gbps"] / r["memcpy_gbps"], 1e-6),
              "pct_of_memcpy is not 100 * gbps / memcpy_gbps")


def mode_errors(sqa, _):
    cases = [
        (["bench", "attention", "--heads", "6", "--variants", "sqa"], ["H (6)", "divisible by 4"]),
        (["bench", "attention", "--bogus", "1"], ["unknown option --bogus"]),
        (["bench", "attention", "--heads", "x"], ["--heads", "(x)", "must be an integer"]),
        (["bench", "attention", "--seq", "64,abc"], ["--seq", "(abc)", "must be an integer"]),
        (["bench", "attention", "--seq", "0"], ["sequence length (0)", "must be in"]),
        (["bench", "attention", "--head-dim", "300"], ["--head-dim (300)", "[1, 256]"]),
        (["bench", "attention", "--variants", "mha,foo"], ["unknown variant 'foo'", "mha gqa"]),
        (["bench", "attention", "--dtype", "f16"], ["--dtype (f16)", "f32 or bf16"]),
        (["bench", "attention", "--window", "0"], ["--window (0)", "at least 1"]),
        (["bench", "attention", "--repeat"], ["--repeat needs a value"]),
        (["bench", "attention", "--rounds", "0"], ["--rounds (0)", "[1, 1000]"]),
        (["bench", "nope"], ["unknown benchmark 'nope'"]),
    ]
    for args, needles in cases:
        rc, out, err = run(sqa, args)
        check(rc != 0, f"{' '.join(args)}: exit code {rc}, expected non-zero")
        for needle in needles:
            check(needle in err, f"{' '.join(args)}: stderr lacks '{needle}': {err!r}")


SOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "sqa")
# (subcommand words, source file, the function whose reject_unknown set lists its options)
HELP_COMMANDS = [(["train"], "cmd_model.cpp", "cmd_train"), (["eval"], "cmd_model.cpp", "cmd_eval"),
                 (["generate"], "cmd_model.cpp", "cmd_generate"),
                 (["info"], "cmd_info.cpp", "cmd_info"),
                 (["dump"], "cmd_dump.cpp", "cmd_dump"),
                 (["bench", "model"], "cmd_bench_model.cpp", "bench_model"),
                 (["bench", "attention"], "cmd_bench.cpp", "parse_options")]


def accepted_options(source, function):
    """The option names in the first reject_unknown({...}) after `function(` in the source."""
    text = open(os.path.join(SOURCES, source)).read()
    start = text.find(function + "(")
    if start < 0:
        return None
    call = text.find("reject_unknown(", start)
    if call < 0:
        return None
    body = text[call:text.find("})", call)]
    return [o for o in __import__("re").findall(r'"([a-z0-9-]+)"', body) if o != "help"]


def mode_help(sqa, _):
    """Every subcommand answers --help with exit code 0 and documents every option it accepts."""
    for words, source, function in HELP_COMMANDS:
        rc, out, err = run(sqa, words + ["--help"])
        name = " ".join(words)
        check(rc == 0, f"sqa {name} --help: exit code {rc}: {err!r}")
        check(out.startswith("usage: sqa " + name), f"sqa {name} --help: no usage line: {out!r}")
        options = accepted_options(source, function)
        check(options is not None, f"{source}: no reject_unknown set after {function}(")
        for option in options or []:
            check(f"--{option}" in out, f"sqa {name} --help does not document --{option}")


def main():
    sqa, mode, work = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(work, exist_ok=True)
    {"info": mode_info, "bench": mode_bench, "decode": mode_decode,
     "errors": mode_errors, "help": mode_help}[mode](sqa, work)
    for f in failures:
        print("FAIL:", f)
    print(f"{mode}: {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
