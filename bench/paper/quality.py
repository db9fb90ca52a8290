#!/usr/bin/env python3
"""Tables 1 and 2 of the paper (issue 5): train every variant with several seeds on the same
real corpus and report validation loss, perplexity, accuracy and wall time as mean +- std.

    python3 bench/paper/quality.py --table 2 --tokens 2e6 --seeds 1,2,3 --out runs/table2
    python3 bench/paper/quality.py --table 1 --device cuda --time-budget 540 --out runs/table1

Everything the paper fixes is fixed here (configs/paper/{dense,moe}-<variant>.json, learning
rate, schedule, context); what our machines bound is the token budget (--tokens), which scales
the schedule: steps = tokens / (batch * context). The batch defaults to the paper's unless
--batch is given. One tokenizer is trained once per --out and shared by every run, so all
variants see the same token stream in the same order (same data seed); the model seed varies.

Runs are resumable: each (variant, seed) lives in OUT/<variant>-s<seed> and `sqa train --resume`
continues from its last checkpoint. With --time-budget S the script stops starting or
continuing runs once S seconds have passed (the run in flight is stopped with SIGTERM after
its next checkpoint interval at the latest), so a 10-minute device command can be repeated
until every run is done. --jobs N runs N at once (each logging to OUT/<run>/train.log);
--gpus 0,1,2,3 spreads them over GPUs (CUDA_VISIBLE_DEVICES, least-loaded first), so a 2- or
4-GPU machine trains several variants at once, and a small model can share one GPU with
others. Results: OUT/results.json, and a markdown table on stdout; --json
copies the results to a file (e.g. bench/results/<date>-table2-cpu.json).
"""

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# The paper's setups (../shared/design/paper.md). Batches are the paper's; lr and schedule too.
TABLES = {
    1: dict(kind="dense", variants=["mha", "gqa", "mqa", "sqa", "ssqa", "xsqa", "xsmqa"],
            lr=5e-4, schedule="warmup-cosine", warmup=0.25, context=1024, batch=128,
            vocab=10000,
            paper={"mha": (1.1976, 3.3121, 77.35, 269), "gqa": (1.2177, 3.3794, 77.12, 258),
                   "mqa": (1.2497, 3.4893, 76.64, 261), "sqa": (1.2272, 3.4117, 76.97, 241),
                   "ssqa": (1.2201, 3.3875, 77.05, 243), "xsqa": (1.2428, 3.4653, 76.74, 235),
                   "xsmqa": (1.2815, 3.6020, 76.22, 235)}),
    2: dict(kind="moe", variants=["gqa", "mqa", "sqa", "ssqa", "xsqa"],
            lr=2e-3, schedule="cosine", warmup=0.0, context=256, batch=256, vocab=5000,
            paper={"gqa": (1.139, 3.124, 70.66, 398), "mqa": (1.158, 3.184, 70.33, 399),
                   "sqa": (1.159, 3.187, 70.32, 387), "ssqa": (1.142, 3.133, 70.63, 390),
                   "xsqa": (1.169, 3.219, 70.12, 383)}),
}

# Real English text from the Debian package python3.11-doc (installed by scripts/setup.sh).
DEFAULT_DATA = "/usr/share/doc/python3.11/html"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", type=int, choices=sorted(TABLES), required=True)
    p.add_argument("--out", required=True, help="run folder (resumable)")
    p.add_argument("--sqa", default=os.path.join(ROOT, "build", "sqa"), help="sqa binary")
    p.add_argument("--data", default=DEFAULT_DATA, help="text/HTML/JSONL corpus or token shard")
    p.add_argument("--tokenizer", help="tokenizer.json to use (default: train one on --data; "
                   "required when --data is a token shard)")
    p.add_argument("--variants", help="comma list (default: the table's)")
    p.add_argument("--seeds", default="1,2,3", help="model seeds, comma list (>= 3 for std)")
    p.add_argument("--tokens", type=float, default=2e6, help="training tokens per run")
    p.add_argument("--batch", type=int, help="sequences per step (default: the paper's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--eval-batches", type=int, default=64)
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once (default 1); with --gpus they spread over the GPUs")
    p.add_argument("--gpus", help="comma list of GPU indices for the runs (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds; 0 = no limit. Stop (resumably) once spent")
    p.add_argument("--json", help="also write the results to this file")
    return p.parse_args()


def positive_int_list(text, what):
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        sys.exit(f"--{what} ({text}) must be a comma list of integers")
    if not values:
        sys.exit(f"--{what} ({text}) must name at least one value")
    return values


def positive_or_zero_list(text, what):
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        sys.exit(f"--{what} ({text}) must be a comma list of integers")
    if not values or any(x < 0 for x in values):
        sys.exit(f"--{what} ({text}) must name at least one index, none negative")
    return values


def run_dir(out, variant, seed):
    return os.path.join(out, f"{variant}-s{seed}")


def train_command(a, t, variant, seed, steps, batch, tokenizer):
    config = os.path.join(ROOT, "configs", "paper", f"{t['kind']}-{variant}.json")
    eval_every = max(1, steps // 4)
    cmd = [a.sqa, "train", "--config", config, "--data", a.data,
           "--out", run_dir(a.out, variant, seed), "--steps", str(steps), "--batch", str(batch),
           "--context", str(t["context"]), "--lr", str(t["lr"]), "--schedule", t["schedule"],
           "--warmup", str(t["warmup"]), "--seed", str(seed), "--eval-every", str(eval_every),
           "--eval-batches", str(a.eval_batches), "--ckpt-every", str(max(1, steps // 5)),
           "--log-every", str(max(1, steps // 10)), "--resume", "--tokenizer", tokenizer]
    if a.device != "cpu":
        cmd += ["--device", a.device]
    return cmd


def ensure_tokenizer(a, t):
    """One tokenizer per --out: the given one, or one trained on the corpus at the table's
    vocabulary size."""
    path = os.path.join(a.out, "tokenizer.json")
    if os.path.isfile(path):
        return path
    if a.tokenizer:
        shutil.copyfile(a.tokenizer, path + ".tmp")
        os.replace(path + ".tmp", path)
        return path
    if a.data.endswith(".tok"):
        sys.exit(f"--data ({a.data}) is a token shard: give the tokenizer that made it "
                 "(--tokenizer FILE)")
    tool = os.path.join(os.path.dirname(a.sqa), "sqa-data")
    tmp = path + ".tmp"
    subprocess.run([tool, "tokenizer", "--data", a.data, "--vocab", str(t["vocab"]),
                    "--out", tmp], check=True)
    os.replace(tmp, path)
    return path


def main():
    a = parse_args()
    t = TABLES[a.table]
    variants = a.variants.split(",") if a.variants else t["variants"]
    for v in variants:
        if v not in t["paper"]:
            sys.exit(f"--variants: '{v}' is not a Table {a.table} variant "
                     f"({', '.join(t['variants'])})")
    seeds = positive_int_list(a.seeds, "seeds")
    if a.jobs < 1:
        sys.exit(f"--jobs ({a.jobs}) must be at least 1")
    batch = a.batch or t["batch"]
    if batch <= 0:
        sys.exit(f"--batch ({batch}) must be positive")
    steps = int(a.tokens // (batch * t["context"]))
    if steps < 1:
        sys.exit(f"--tokens ({a.tokens:g}) must cover at least one step of "
                 f"{batch} x {t['context']} tokens")
    if not os.access(a.sqa, os.X_OK):
        sys.exit(f"--sqa ({a.sqa}) is not an executable; build first (bash scripts/build.sh)")
    os.makedirs(a.out, exist_ok=True)
    tokenizer = ensure_tokenizer(a, t)
    start = time.monotonic()
    out_of_time = False
    longest = 0.0  # the longest run so far: a run that cannot finish in time is not started
    pending = []
    for seed in seeds:
        for v in variants:
            summary = os.path.join(run_dir(a.out, v, seed), "summary.json")
            if not (os.path.isfile(summary) and json.load(open(summary)).get("steps") == steps):
                pending.append((v, seed))
    gpus = positive_or_zero_list(a.gpus, "gpus") if a.gpus else [None]
    running = {}  # Popen -> (variant, seed, start time, gpu, log file or None)

    def stop_all():
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc, (_, _, _, _, log) in running.items():
            proc.wait()
            if log:
                log.close()
        running.clear()

    while pending or running:
        left = a.time_budget - (time.monotonic() - start) if a.time_budget else None
        while pending and len(running) < a.jobs:
            if left is not None and left < max(30.0, 1.1 * longest):
                out_of_time = True
                pending.clear()
                break
            v, seed = pending.pop(0)
            cmd = train_command(a, t, v, seed, steps, batch, tokenizer)
            # The least-loaded GPU (several runs may share one: small models leave it idle).
            load = {g: 0 for g in gpus}
            for *_, g, _ in running.values():
                load[g] += 1
            gpu = min(gpus, key=lambda g: load[g])
            env = dict(os.environ)
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = str(gpu)
            log = None
            if a.jobs > 1:  # concurrent runs each write their own log; one stream otherwise
                os.makedirs(run_dir(a.out, v, seed), exist_ok=True)
                log = open(os.path.join(run_dir(a.out, v, seed), "train.log"), "w")
            where = "" if gpu is None else f"[GPU {gpu}] "
            print(f"+ {where}" + " ".join(cmd), flush=True)
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT if log
                                    else None)
            running[proc] = (v, seed, time.monotonic(), gpu, log)
        if not running:
            break
        if left is not None and left <= 0:
            stop_all()
            out_of_time = True
            break
        time.sleep(0.2)
        for proc in [p for p in running if p.poll() is not None]:
            v, seed, began, _, log = running.pop(proc)
            if log:
                log.close()
            if proc.returncode != 0:
                stop_all()
                where = f" (log: {log.name})" if log else ""
                sys.exit(f"training {v} seed {seed} failed with exit code {proc.returncode}"
                         f"{where}")
            longest = max(longest, time.monotonic() - began)
            if a.jobs > 1:
                print(f"done {v} seed {seed} in {time.monotonic() - began:.0f} s", flush=True)
    results = collect(a, t, variants, seeds, steps, batch)
    text = json.dumps(results, indent=2) + "\n"
    with open(os.path.join(a.out, "results.json"), "w") as f:
        f.write(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    print(markdown(results))
    if out_of_time:
        print(f"time budget spent: run the same command again to continue ({a.out})")
        return 3
    return 0


def collect(a, t, variants, seeds, steps, batch):
    rows = []
    for v in variants:
        runs = []
        for seed in seeds:
            path = os.path.join(run_dir(a.out, v, seed), "summary.json")
            if not os.path.isfile(path):
                continue
            s = json.load(open(path))
            if s.get("steps") != steps or "val_loss" not in s:
                continue
            runs.append(dict(seed=seed, val_loss=s["val_loss"], val_ppl=s["val_ppl"],
                             val_acc=s["val_acc"], train_seconds=s["train_seconds"],
                             tokens_per_s=s["train_tokens_per_s"], parameters=s["parameters"]))
        rows.append(dict(variant=v, runs=runs, paper=dict(zip(
            ("val_loss", "val_ppl", "val_acc_pct", "minutes"), t["paper"][v]))))
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return dict(table=a.table, kind=t["kind"], device=a.device, machine=platform.node(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                commit=commit, data=a.data, tokens_per_run=steps * batch * t["context"],
                steps=steps, batch=batch, context=t["context"], lr=t["lr"],
                schedule=t["schedule"], warmup=t["warmup"], seeds=seeds, rows=rows)


def mean_std(values):
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else
                                      float("nan"))


def markdown(r):
    lines = [f"Table {r['table']} ({r['kind']}), {r['device']}: {r['tokens_per_run']:,} training "
             f"tokens per run ({r['steps']} steps x {r['batch']} x {r['context']}), lr {r['lr']}, "
             f"{r['schedule']}, seeds {r['seeds']}; mean +- std over seeds", "",
             "| model | params | runs | val loss | ppl | acc % | train s | paper loss | paper acc % |",
             "|---|---:|---:|---|---|---|---:|---:|---:|"]
    for row in r["rows"]:
        runs = row["runs"]
        loss = mean_std([x["val_loss"] for x in runs])
        ppl = mean_std([x["val_ppl"] for x in runs])
        acc = mean_std([100 * x["val_acc"] for x in runs])
        secs = mean_std([x["train_seconds"] for x in runs])[0]
        params = runs[0]["parameters"] if runs else 0

        def fmt(ms, digits):
            m, s = ms
            if math.isnan(m):
                return "-"
            return f"{m:.{digits}f}" + ("" if math.isnan(s) else f" +- {s:.{digits}f}")

        lines.append(f"| {row['variant']} | {params:,} | {len(runs)} | {fmt(loss, 4)} | "
                     f"{fmt(ppl, 2)} | {fmt(acc, 2)} | {secs:.0f} | "
                     f"{row['paper']['val_loss']} | {row['paper']['val_acc_pct']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
