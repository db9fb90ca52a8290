#!/usr/bin/env python3
"""Builds the generated parts of docs/results.md and its PNG plots from bench/results/ JSON.

    python3 bench/paper/report.py                # newest result files of each kind
    python3 bench/paper/report.py --check        # exit 1 if docs/results.md is out of date

docs/results.md keeps hand-written text (setup notes, discussion) outside the marker pairs
`<!-- generated:NAME -->` ... `<!-- /generated:NAME -->`; only the text between a pair is
rewritten, so the discussion stays where it is written. Inputs (newest by file name):
  bench/results/*-table1-*.json, *-table2-*.json   bench/paper/quality.py --json
  bench/results/*-table3-sqa*.json                  bench/paper/table3_sqa.py, sqa side
  bench/results/*-table3-torch*.json                bench/torch_reference.py bench, same run
(Table 3 merges every file of the newest one's date, e.g. a forward and a training part.)
Plots (docs/img/*.png) need matplotlib; without it the tables are still written. A quality
result's `-runs.tgz` beside its JSON (each run's metrics.jsonl) adds validation-loss curves.
"""

import argparse
import glob
import json
import math
import os
import re
import statistics
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stats  # noqa: E402  (bench/paper/stats.py)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RESULTS = os.path.join(ROOT, "bench", "results")
DOC = os.path.join(ROOT, "docs", "results.md")
IMG = os.path.join(ROOT, "docs", "img")

# Table 3 of the paper: seconds per forward step on one A100 40GB (paper.md).
PAPER_TABLE3 = {
    1024: dict(xsqa=0.0570, sqa=0.0642, ssqa=0.0669, swsqa=0.0759, mqa=0.0760, gqa=0.0785,
               mha=0.0869),
    4096: dict(xsqa=0.0637, sqa=0.0750, ssqa=0.0793, swsqa=0.0794, mqa=0.1001, gqa=0.1027,
               mha=0.1114),
    32768: dict(xsqa=0.1348, sqa=0.1991, ssqa=0.2117, swsqa=0.1871, mqa=0.3612, gqa=0.3637,
                mha=0.3727),
    131072: dict(xsqa=0.3759, sqa=0.6308, ssqa=0.6630, swsqa=0.7531, mqa=1.2530, gqa=1.2558,
                 mha=1.2648),
    200000: dict(xsqa=0.8194, sqa=1.4116, ssqa=1.4824, swsqa=1.1871, mqa=2.8555, gqa=2.8596,
                 mha=2.8734),
}
TABLE3_VARIANTS = ["xsqa", "sqa", "ssqa", "swsqa", "mqa", "gqa", "mha"]
LABEL = dict(mha="MHA", gqa="GQA", mqa="MQA", sqa="SQA", ssqa="sSQA", xsqa="xSQA",
             xsmqa="xSMQA", swsqa="SW-SQA(128)", lsqa="lSQA", rsqa="rSQA")


def newest(pattern):
    files = sorted(glob.glob(os.path.join(RESULTS, pattern)))
    return files[-1] if files else None


def rel(path):
    return os.path.relpath(path, ROOT)


def mean_std(values):
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def fmt(ms, digits):
    m, s = ms
    if math.isnan(m):
        return "-"
    return f"{m:.{digits}f}" + ("" if math.isnan(s) else f" ± {s:.{digits}f}")


def quality_section(path, plots):
    r = json.load(open(path))
    lines = [f"Source: `{rel(path)}` (commit {r['commit']}, {r['date']}, device {r['device']}). "
             f"{r['tokens_per_run']:,} training tokens per run ({r['steps']} steps × batch "
             f"{r['batch']} × context {r['context']}), lr {r['lr']}, {r['schedule']} schedule "
             f"(warm-up {r['warmup']:.0%}), seeds {', '.join(map(str, r['seeds']))}; data "
             f"`{r['data']}`. Mean ± sample std over seeds.", "",
             "| model | params | seeds | val loss | ppl | acc % | train s/run | paper loss | "
             "paper ppl | paper acc % |", "|---|---:|---:|---|---|---|---:|---:|---:|---:|"]
    names, losses, errs = [], [], []
    for row in r["rows"]:
        runs = row["runs"]
        loss = mean_std([x["val_loss"] for x in runs])
        p = row["paper"]
        lines.append(
            f"| {LABEL.get(row['variant'], row['variant'])} | "
            f"{runs[0]['parameters'] if runs else 0:,} | {len(runs)} | {fmt(loss, 4)} | "
            f"{fmt(mean_std([x['val_ppl'] for x in runs]), 2)} | "
            f"{fmt(mean_std([100 * x['val_acc'] for x in runs]), 2)} | "
            f"{mean_std([x['train_seconds'] for x in runs])[0]:.0f} | {p['val_loss']} | "
            f"{p['val_ppl']} | {p['val_acc_pct']} |")
        if runs:
            names.append(LABEL.get(row["variant"], row["variant"]))
            losses.append(loss[0])
            errs.append(0 if math.isnan(loss[1]) else loss[1])
    lines += ["", *differences(r)]
    curves = learning_curves(path, r, plots)
    if curves:
        lines += ["", curves]
    name = f"table{r['table']}-loss.png"
    if plots and names:
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.bar(names, losses, yerr=errs, capsize=4, color="#4c72b0")
        lo = min(l - e for l, e in zip(losses, errs))
        hi = max(l + e for l, e in zip(losses, errs))
        ax.set_ylim(lo - (hi - lo) * 0.5 - 1e-3, hi + (hi - lo) * 0.3 + 1e-3)
        ax.set_ylabel("validation loss")
        ax.set_title(f"Table {r['table']} ({r['kind']}): mean ± std over "
                     f"{len(r['seeds'])} seeds")
        fig.tight_layout()
        fig.savefig(os.path.join(IMG, name), dpi=120)
        plt.close(fig)
    if names and os.path.isfile(os.path.join(IMG, name)):
        lines += ["", f"![Table {r['table']} validation loss](img/{name})"]
    return "\n".join(lines)


# The paper's baseline for each quality table: the differences are taken against it.
BASELINE = {1: "mha", 2: "gqa"}


def differences(r):
    """Each variant's validation loss minus the baseline's, with Welch's 95% interval."""
    base_name = BASELINE[r["table"]]
    runs = {row["variant"]: [x["val_loss"] for x in row["runs"]] for row in r["rows"]}
    base = runs.get(base_name, [])
    paper = {row["variant"]: row["paper"]["val_loss"] for row in r["rows"]}
    lines = [f"Validation loss minus {LABEL[base_name]}'s (positive: worse), Welch's t-test over "
             "seeds, 95% interval; the paper's difference from its single runs:", "",
             "| model | Δ loss | 95% interval | t | df | p | paper Δ |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for row in r["rows"]:
        v = row["variant"]
        if v == base_name:
            continue
        w = stats.welch(runs[v], base)
        paper_diff = f"{paper[v] - paper[base_name]:+.4f}"
        if w is None:
            lines.append(f"| {LABEL.get(v, v)} | - | - | - | - | - | {paper_diff} |")
            continue
        lines.append(f"| {LABEL.get(v, v)} | {w['diff']:+.4f} | [{w['lo']:+.4f}, {w['hi']:+.4f}] "
                     f"| {w['t']:.1f} | {w['df']:.1f} | {w['p']:.3f} | {paper_diff} |")
    return lines


def learning_curves(path, r, plots):
    """Validation loss against tokens seen, mean over seeds, from the runs archive."""
    archive = path[:-len(".json")] + "-runs.tgz"
    if not os.path.isfile(archive):
        return ""
    curves = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not member.name.endswith("metrics.jsonl"):
                continue
            run = os.path.basename(os.path.dirname(member.name))
            variant = run.rsplit("-s", 1)[0]
            points = [json.loads(line) for line in tar.extractfile(member).read().splitlines()]
            for p in points:
                if "val_loss" in p:
                    curves.setdefault(variant, {}).setdefault(p["step"], []).append(p["val_loss"])
    name = f"table{r['table']}-curves.png"
    if plots and curves:
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.6))
        tokens_per_step = r["batch"] * r["context"]
        for row in r["rows"]:
            steps = sorted(curves.get(row["variant"], {}))
            if not steps:
                continue
            ax.plot([s * tokens_per_step / 1e6 for s in steps],
                    [statistics.fmean(curves[row["variant"]][s]) for s in steps], marker="o",
                    markersize=3, label=LABEL.get(row["variant"], row["variant"]))
        ax.set_xlabel("training tokens (M)")
        ax.set_ylabel("validation loss")
        ax.set_title(f"Table {r['table']}: validation loss, mean over seeds")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(IMG, name), dpi=120)
        plt.close(fig)
    if os.path.isfile(os.path.join(IMG, name)):
        return f"![Table {r['table']} validation curves](img/{name}) (from `{rel(archive)}`)"
    return ""


def merged(paths):
    """One report from several result files of one device run (e.g. the forward and the
    training parts): later files' cells replace earlier ones with the same key."""
    cells = {}
    for path in paths:
        for x in json.load(open(path))["results"]:
            cells[(x["variant"], x["kind"], x["seqlen"], x["batch"])] = x
    return {"results": list(cells.values())}


def same_day(pattern):
    """Every result file matching pattern from the newest one's date (its YYYY-MM-DD prefix)."""
    newest_path = newest(pattern)
    if not newest_path:
        return []
    day = os.path.basename(newest_path)[:10]
    return sorted(p for p in glob.glob(os.path.join(RESULTS, pattern))
                  if os.path.basename(p).startswith(day))


def table3_section(sqa_paths, torch_paths, plots):
    sqa, ref = merged(sqa_paths), merged(torch_paths)

    def find(report, variant, kind, T):
        for x in report["results"]:
            v = x["variant"].replace("-", "")
            if v == variant and x["kind"] == kind and x["seqlen"] == T and "error" not in x:
                return x
        return None

    lines = []
    head = ["sqa: " + (", ".join(f"`{rel(p)}`" for p in sqa_paths) or "no result file yet"),
            "PyTorch reference: " + (", ".join(f"`{rel(p)}`" for p in torch_paths) or
                                     "no result file yet")]
    lines.append("Sources: " + "; ".join(head) + ". Seconds per forward step (median), bf16; "
                 "in brackets each cell's speed-up over MHA in the same row (MHA time / time).")
    lines += ["", "| N × batch | row | " + " | ".join(LABEL[v] for v in TABLE3_VARIANTS) +
              " | xSQA vs MHA |", "|---|---|" + "---:|" * (len(TABLE3_VARIANTS) + 1)]
    for T, paper in PAPER_TABLE3.items():
        batch = {1024: 128, 4096: 32, 32768: 4, 131072: 1, 200000: 1}[T]
        for label, report in (("sqa (H200)", sqa), ("PyTorch (H200)", ref)):
            cells = [find(report, v, "forward", T) for v in TABLE3_VARIANTS]
            x, m = cells[0], cells[-1]
            text = [(f"{c['median_s']:.4f}" +
                     (f" ({m['median_s'] / c['median_s']:.2f}x)" if m else "")) if c else "-"
                    for c in cells]
            sp = f"{m['median_s'] / x['median_s']:.2f}x" if x and m else "-"
            lines.append(f"| {T:,} × {batch} | {label} | " + " | ".join(text) + f" | {sp} |")
        lines.append(f"| {T:,} × {batch} | paper (A100) | " +
                     " | ".join(f"{paper[v]:.4f} ({paper['mha'] / paper[v]:.2f}x)"
                                for v in TABLE3_VARIANTS) +
                     f" | {paper['mha'] / paper['xsqa']:.2f}x |")
    train_rows = []
    for label, report, kind in (("sqa (H200)", sqa, "train"),
                                ("PyTorch eager (H200)", ref, "train_eager"),
                                ("PyTorch compile (H200)", ref, "train_compile")):
        sizes = sorted({x["seqlen"] for x in report["results"] if x["kind"] == kind})
        for T in sizes:
            cells = [find(report, v, kind, T) for v in TABLE3_VARIANTS]
            if any(cells):
                b = next(c for c in cells if c)["batch"]
                x, m = cells[0], cells[-1]
                sp = f"{x['tokens_per_s'] / m['tokens_per_s']:.2f}x" if x and m else "-"
                train_rows.append(f"| {T:,} × {b} | {label} | " + " | ".join(
                    (f"{c['tokens_per_s'] / 1e6:.3f}" +
                     (f" ({c['tokens_per_s'] / m['tokens_per_s']:.2f}x)" if m else ""))
                    if c else "-" for c in cells) +
                    f" | {sp} |")
    if train_rows:
        lines += ["", "Training step (forward + backward + AdamW), million tokens/s; in brackets "
                  "each cell's speed-up over MHA in the same row (tokens/s / MHA tokens/s):", "",
                  "| N × batch | row | " + " | ".join(LABEL[v] for v in TABLE3_VARIANTS) +
                  " | xSQA vs MHA |", "|---|---|" + "---:|" * (len(TABLE3_VARIANTS) + 1)]
        lines += train_rows
    if plots and (sqa["results"] or ref["results"]):
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for v, color in zip(("xsqa", "sqa", "mha"), ("#55a868", "#4c72b0", "#c44e52")):
            Ts = sorted(PAPER_TABLE3)
            ax.plot(Ts, [PAPER_TABLE3[T][v] for T in Ts], ":", color=color,
                    label=f"{LABEL[v]} paper A100")
            for label, report, style in (("sqa H200", sqa, "-o"), ("PyTorch H200", ref, "--s")):
                pts = [(T, find(report, v, "forward", T)) for T in Ts]
                pts = [(T, c["median_s"]) for T, c in pts if c]
                if pts:
                    ax.plot(*zip(*pts), style, color=color, label=f"{LABEL[v]} {label}",
                            markersize=4)
        ax.set_xscale("log")
        ax.set_xlabel("sequence length (batch per the paper)")
        ax.set_ylabel("seconds per forward step")
        ax.legend(fontsize=7, ncol=3)
        ax.set_title("Table 3: dense model forward, bf16")
        fig.tight_layout()
        fig.savefig(os.path.join(IMG, "table3-forward.png"), dpi=120)
        plt.close(fig)
    if os.path.isfile(os.path.join(IMG, "table3-forward.png")):
        lines += ["", "![Table 3 forward time](img/table3-forward.png)"]
    return "\n".join(lines)


def replace_block(text, name, body):
    start, end = f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    block = f"{start}\n{body}\n{end}"
    if not pattern.search(text):
        sys.exit(f"docs/results.md has no '{start}' ... '{end}' pair")
    return pattern.sub(lambda _: block, text)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the document would change")
    p.add_argument("--no-plots", action="store_true")
    a = p.parse_args()
    plots = not a.no_plots and not a.check
    if plots:
        try:
            import matplotlib
            matplotlib.use("Agg")
        except ImportError:
            print("report: matplotlib missing, writing tables only", file=sys.stderr)
            plots = False
    os.makedirs(IMG, exist_ok=True)
    text = open(DOC).read()
    new = text
    new = replace_block(new, "table3", table3_section(same_day("*-table3-sqa*.json"),
                                                      same_day("*-table3-torch*.json"), plots))
    for t in (1, 2):
        path = newest(f"*-table{t}-*.json")
        body = quality_section(path, plots) if path else "No result file yet."
        new = replace_block(new, f"table{t}", body)
    if a.check:
        return 1 if new != text else 0
    with open(DOC, "w") as f:
        f.write(new)
    print(f"wrote {rel(DOC)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
