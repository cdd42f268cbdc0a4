#!/usr/bin/env python3
"""Ours against PyTorch on the same workloads, side by side (`make bench-compare`).

For each model shape, runs ours (shared/benches/throughput.rs, release build) and PyTorch's
(scripts/gpu_check_torch.py) on the CPU in f32, interleaved run by run (ours, PyTorch, ours,
PyTorch, ...) for --rounds rounds, each process measured alone: tokens/s of each workload from
its JSON lines, peak RSS from the kernel's accounting of the finished child (wait4). Prints one
table (tokens/s lowest-highest over the rounds, ratio ours/PyTorch per round, lowest-highest)
and writes it under target/bench-compare/, with each process's numbers in runs-*.jsonl as they
come (--table-from FILE remakes the table of such a file, e.g. of an interrupted run).

    python3 scripts/bench_compare.py --python .venv-torch/bin/python [--rounds 3] [--runs 3]
        [--config bench/bench-40m.config.json --config ...] [--bin path/to/throughput]
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIGS = ["bench/bench-40m.config.json", "bench/bench-smollm2-135m.config.json"]
WORKLOADS = ["generate", "logprobs", "train"]


def build_ours():
    """Builds the throughput bench in the bench (release) profile; returns its executable."""
    cargo = os.environ.get("CARGO", "cargo")
    cmd = [cargo, "bench", "--workspace", "--bench", "throughput", "--no-run",
           "--message-format=json-render-diagnostics"]
    out = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, check=True, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "throughput" \
                and msg.get("executable"):
            return msg["executable"]
    raise SystemExit("bench_compare: cargo built no `throughput` bench executable")


def run_measured(cmd):
    """Runs `cmd` as a child and returns (JSON rows, peak RSS bytes, user s, sys s)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Both pipes drained by threads so the child never blocks; the exit status and the
    # child's own rusage come from wait4.
    chunks = {"out": [], "err": []}

    def drain(pipe, key):
        chunks[key].append(pipe.read())

    threads = [threading.Thread(target=drain, args=(proc.stdout, "out")),
               threading.Thread(target=drain, args=(proc.stderr, "err"))]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    for t in threads:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = b"".join(chunks["out"]).decode()
    err = b"".join(chunks["err"]).decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"bench_compare: {' '.join(cmd)} exited {proc.returncode}:\n{err[-3000:]}")
    rows = parse_rows(out)
    # ru_maxrss is in KiB on Linux.
    return rows, usage.ru_maxrss * 1024, usage.ru_utime, usage.ru_stime


def parse_rows(text):
    """The JSON lines of one benchmark process (other lines ignored)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            row = json.loads(line)
            for key in ("impl", "model", "workload", "tokens_per_s"):
                if key not in row:
                    raise ValueError(f"benchmark line without `{key}`: {line}")
            rows.append(row)
    return rows


def span(values, fmt):
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"


def build_table(records):
    """records: one dict per process run {impl, model, round, rows, rss, user, sys}.
    Returns the Markdown table: per model, ours and PyTorch's tokens/s (lowest-highest over
    rounds) and the ratio ours/PyTorch of each round (lowest-highest); then peak RSS."""
    models = []
    for r in records:
        if r["model"] not in models:
            models.append(r["model"])
    head = ["workload"]
    for m in models:
        head += [f"{m}: ours tok/s", "torch tok/s", "ratio"]
    lines = []
    for w in WORKLOADS:
        cells = [w]
        present = False
        for m in models:
            ours, theirs, ratios = tok_per_round(records, m, w)
            present |= bool(ours or theirs)
            cells += [span(list(ours.values()), "{:.0f}") if ours else "-",
                      span(list(theirs.values()), "{:.0f}") if theirs else "-",
                      span([ours[k] / theirs[k] for k in ratios], "{:.2f}") if ratios else "-"]
        if present:
            lines.append(cells)
    cells = ["peak RSS (GB)"]
    for m in models:
        rss = {impl: {r["round"]: r["rss"] / 1e9 for r in records
                      if r["model"] == m and r["impl"] == impl} for impl in ("rspo", "torch")}
        both = sorted(set(rss["rspo"]) & set(rss["torch"]))
        cells += [span(list(rss["rspo"].values()), "{:.2f}") if rss["rspo"] else "-",
                  span(list(rss["torch"].values()), "{:.2f}") if rss["torch"] else "-",
                  span([rss["rspo"][k] / rss["torch"][k] for k in both], "{:.2f}") if both else "-"]
    lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    fmt = "| " + " | ".join("{:<%d}" % w for w in widths) + " |"
    out = [fmt.format(*head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt.format(*l) for l in lines]
    return "\n".join(out)


def tok_per_round(records, model, workload):
    """({round: ours tok/s}, {round: torch tok/s}, rounds with both)."""
    got = {"rspo": {}, "torch": {}}
    for r in records:
        if r["model"] != model:
            continue
        for row in r["rows"]:
            if row["workload"] == workload:
                got[r["impl"]][r["round"]] = row["tokens_per_s"]
    both = sorted(set(got["rspo"]) & set(got["torch"]))
    return got["rspo"], got["torch"], both


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", help="the python that has torch and transformers (required to measure)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per workload in each process")
    ap.add_argument("--config", action="append", help="model shape(s); default 40M and SmolLM2-135M")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--bin", help="our throughput executable (default: cargo bench --no-run)")
    ap.add_argument("--out", default=os.path.join(REPO, "target", "bench-compare"))
    ap.add_argument("--table-from", help="only make the table of a runs-*.jsonl file")
    args = ap.parse_args()
    if args.rounds < 1 or args.runs < 1:
        raise SystemExit("bench_compare: --rounds and --runs must be at least 1")
    configs = [os.path.abspath(c) for c in (args.config or [os.path.join(REPO, c) for c in DEFAULT_CONFIGS])]
    for c in configs:
        if not os.path.isfile(c):
            raise SystemExit(f"bench_compare: --config {c}: no such file")
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs_path = os.path.join(args.out, f"runs-{stamp}.jsonl")
    if args.table_from:
        records = [json.loads(l) for l in open(args.table_from) if l.strip()]
        note = f"from {args.table_from}"
    else:
        if not args.python:
            raise SystemExit("bench_compare: --python: the python with torch and transformers is required "
                             "(scripts/torch-venv.sh prints it)")
        ours = args.bin or build_ours()
        records, note = measure_rounds(args, ours, configs, runs_path)
    table = build_table(records)
    versions = next((r for rec in records for r in rec["rows"] if "torch" in r), {})
    note = (f"f32 on the CPU; torch {versions.get('torch', '?')}, transformers "
            f"{versions.get('transformers', '?')}; {note}")
    print(table)
    print(note)
    table_path = os.path.join(args.out, f"table-{stamp}.md")
    with open(table_path, "w") as f:
        f.write(table + "\n\n" + note + "\n")
    print(f"written to {table_path}", file=sys.stderr)


def measure_rounds(args, ours, configs, runs_path):
    """Runs the rounds, each record appended to `runs_path` as it comes (an interrupted run
    keeps what it measured: --table-from makes its table). Returns the records and a note on
    the conditions."""
    common = ["--device", "cpu", "--dtype", "f32", "--runs", str(args.runs),
              "--workloads", args.workloads]
    load_before = open("/proc/loadavg").read().split()[:3]
    records = []
    started = time.time()
    for rnd in range(1, args.rounds + 1):
        for c in configs:
            for impl, cmd in (("rspo", [ours, "--config", c]),
                              ("torch", [args.python, os.path.join(REPO, "scripts", "gpu_check_torch.py"),
                                         "--config", c])):
                rows, rss, user, sys_s = run_measured(cmd + common)
                model = rows[0]["model"] if rows else os.path.basename(c)
                record = {"impl": impl, "model": model, "round": rnd, "rows": rows,
                          "rss": rss, "user": user, "sys": sys_s}
                records.append(record)
                with open(runs_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"round {rnd} {impl:5} {model}: "
                      + ", ".join(f"{r['workload']} {r['tokens_per_s']:.0f} tok/s" for r in rows)
                      + f"; peak RSS {rss / 1e9:.2f} GB, user {user:.0f} s, sys {sys_s:.0f} s",
                      file=sys.stderr, flush=True)
    load_after = open("/proc/loadavg").read().split()[:3]
    with open("/proc/cpuinfo") as f:
        cpu = cpu_description(f.read())
    note = (f"{args.rounds} interleaved rounds of {args.runs} timed runs; {os.cpu_count()} cores, "
            f"{cpu}; load average {' '.join(load_before)} before, {' '.join(load_after)} after; "
            f"{time.time() - started:.0f} s")
    return records, note


def cpu_description(cpuinfo):
    """The first processor of a /proc/cpuinfo text: its name, family and model, and whether it
    has AVX-512. Tables from two machines differ mostly by these: gemm runs AVX-512 kernels where
    the processor has them, and a full-width AVX-512 unit (AMD family 26, Zen 5) doubles their
    throughput over a double-pumped one (family 25, Zen 4), while PyTorch's CPU matmuls gain
    little. "AMD EPYC" alone does not tell them apart."""
    fields = {}
    for line in cpuinfo.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags", "").split()
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return (f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')} "
            f"model {fields.get('model', '?')}, {simd})")


if __name__ == "__main__":
    main()
