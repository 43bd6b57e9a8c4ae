#!/usr/bin/env python3
"""dcpp against PyTorch 1.13 DCP and the disk, side by side in one run.

    python3 scripts/bench.py [--sizes 256,1024] [--rounds 3] [--hidden 1024]

Each round runs, for each size, in this order: PyTorch DCP world 1
(shared/bench/peer_dcp.py, its 1.13 defaults), dcpp_bench on the same
tensor layout (peer_dcp.py --print-layout), and `dd conv=fdatasync` of the
same byte count. The page cache is dropped before every cold load (root).
Prints medians (min-max) and same-round ratios; raw JSON lines go to
results/bench-<time>.jsonl.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
PEER = os.path.join(SHARED, "bench", "peer_dcp.py")
BENCH = os.path.join(ROOT, "build", "apps", "dcpp_bench")
SYSTEM_PYTHON = "/usr/bin/python3"


def run_json(cmd, timeout=3600):
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    recs = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    sys.stderr.write(f"  [{time.time() - t:6.1f}s] rc={p.returncode} {' '.join(cmd[:3])}\n")
    if p.returncode != 0 or not recs:
        sys.stderr.write(p.stderr[-3000:] + "\n")
        return []
    return recs


def dd_fdatasync(size_mb, parent):
    path = os.path.join(parent, "dd_probe")
    src = "/dev/shm/dcpp_bench_random"
    if not os.path.exists(src) or os.path.getsize(src) < (64 << 20):
        with open(src, "wb") as f:
            f.write(os.urandom(64 << 20))
    t = time.time()
    blocks = max(1, size_mb // 64)
    with open(path, "wb") as out:
        chunk = open(src, "rb").read()
        for _ in range(blocks):
            out.write(chunk)
        out.flush()
        os.fdatasync(out.fileno())
    el = time.time() - t
    os.unlink(path)
    return {"impl": "dd_fdatasync", "save_GBps": blocks * (64 << 20) / el / 1e9}


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default=None, help="parent dir for checkpoints (default: a temp dir under /tmp)")
    args = ap.parse_args()
    if not os.path.exists(BENCH):
        sys.exit(f"{BENCH} missing: run scripts/build.sh first")
    parent = args.dir or tempfile.mkdtemp(prefix="dcpp-bench-")
    os.makedirs(parent, exist_ok=True)
    os.makedirs(os.path.join(ROOT, "results"), exist_ok=True)
    out_path = os.path.join(ROOT, "results", time.strftime("bench-%Y%m%d-%H%M%S.jsonl"))
    records = []
    sizes = [int(s) for s in args.sizes.split(",")]
    layouts = {}
    for size in sizes:
        p = subprocess.run([SYSTEM_PYTHON, PEER, "--print-layout", "--size-mb", str(size),
                            "--hidden", str(args.hidden)], capture_output=True, text=True, check=True)
        path = os.path.join(parent, f"layout_{size}.json")
        with open(path, "w") as f:
            f.write(p.stdout)
        layouts[size] = path
    for rnd in range(args.rounds):
        for size in sizes:
            sys.stderr.write(f"round {rnd + 1}/{args.rounds}, {size} MiB\n")
            found = {}
            for rec in run_json([SYSTEM_PYTHON, PEER, "--world", "1", "--size-mb", str(size),
                                 "--hidden", str(args.hidden), "--dir", parent]):
                found["dcp"] = rec
            for rec in run_json([BENCH, "--layout", layouts[size], "--dir", parent,
                                 "--threads", str(args.threads)]):
                found["dcpp"] = rec
            found["dd"] = dd_fdatasync(size, parent)
            for impl, rec in found.items():
                rec = dict(rec, bench_impl=impl, bench_size=size, bench_round=rnd)
                records.append(rec)
                with open(out_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")

    print(f"\nmedians over {args.rounds} rounds (GB/s = 1e9 B/s of state dict); raw: {out_path}\n")
    print("| size MiB | impl | save GB/s | load cold GB/s | load warm GB/s | verified |")
    print("|---:|---|---:|---:|---:|---|")
    for size in sizes:
        for impl in ("dcp", "dcpp", "dd"):
            rs = [r for r in records if r["bench_size"] == size and r["bench_impl"] == impl]
            if not rs:
                continue

            def col(k):
                xs = [r[k] for r in rs if k in r]
                return f"{med(xs):.3f} ({min(xs):.2f}-{max(xs):.2f})" if xs else "-"

            ver = all(r.get("verified", True) for r in rs)
            print(f"| {size} | {impl} | {col('save_GBps')} | {col('load_cold_GBps')} | "
                  f"{col('load_warm_GBps')} | {ver} |")
    print("\nsame-round ratios, median:\n")
    print("| size MiB | dcpp/dcp save | dcpp/dcp cold | dcpp/dcp warm | dcpp save / dd fdatasync |")
    print("|---:|---:|---:|---:|---:|")
    for size in sizes:
        ratios = {"save": [], "cold": [], "warm": [], "dd": []}
        for rnd in range(args.rounds):
            by = {r["bench_impl"]: r for r in records if r["bench_size"] == size and r["bench_round"] == rnd}
            if "dcp" in by and "dcpp" in by:
                ratios["save"].append(by["dcpp"]["save_GBps"] / by["dcp"]["save_GBps"])
                ratios["cold"].append(by["dcpp"]["load_cold_GBps"] / by["dcp"]["load_cold_GBps"])
                ratios["warm"].append(by["dcpp"]["load_warm_GBps"] / by["dcp"]["load_warm_GBps"])
            if "dd" in by and "dcpp" in by:
                ratios["dd"].append(by["dcpp"]["save_GBps"] / by["dd"]["save_GBps"])
        print(f"| {size} | {med(ratios['save']):.2f} | {med(ratios['cold']):.2f} | "
              f"{med(ratios['warm']):.2f} | {med(ratios['dd']):.2f} |")


if __name__ == "__main__":
    main()
