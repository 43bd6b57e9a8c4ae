#!/usr/bin/python3
"""dcpp against PyTorch 1.13 DCP and the machine's limits, side by side in one run.

    python3 scripts/bench.py [--sizes 1024] [--worlds 1,2,4] [--rounds 3]
                             [--only main,reshard,async,limits,p16,engine]
                             [--report docs/benchmarks.md] [--chart docs/benchmarks.png]
    python3 scripts/bench.py --summarize results/bench-<stamp>.jsonl [--report ...] [--chart ...]

Every round runs, for every size, these groups in turn (so ratios compare
figures measured minutes apart; --only picks some):

  limits   scripts/bench_limits.sh once (copied from shared/bench): dd
           write with fdatasync and O_DIRECT, cold and warm read(2) of the
           DCP file layout into huge-page memory, memcpy, first touch
  main     for every world size and for sharded (row-wise ShardedTensors)
           and replicated (every rank holds all): PyTorch DCP
           (scripts/bench_peer_dcp.py --world N) and dcpp rank processes
           (dcpp-launch --nproc N -- dcpp-worker save|load --layout-file),
           each saving, loading cold (page cache dropped) and loading warm.
           Aliases: save, load (a load needs the save before it)
  reshard  saved on --reshard-from ranks, loaded on each of --reshard-to,
           cold and warm, and the same-layout load on as many ranks for
           reference (PyTorch: scripts/bench_dcp_reshard.py)
  p16      dcpp save and load on 16 rank processes (--p16-size MiB)
  engine   dcpp_bench: one process, no_dist, on the main rows' layout, its
           tensors in dcpp's huge-page memory (--alloc huge: the engine's
           ceiling) and in PyTorch's (--alloc torch, as the rank
           processes' at::zeros destinations); the report sets every
           rank-process row against the ceiling of the same round
  async    dcpp_bench's async save mode (blocking time, time to durable,
           peak RSS, memcpy of the same bytes) when the binary has one

Both systems get the identical tensors: bench_peer_dcp.py --print-layout
writes the layout, dcpp-worker reads it (--layout-file) and splits rows the
way torch.tensor_split does. Loads go into destination tensors allocated and
touched beforehand; a fresh process's allocation time is its own column.
Throughput is logical state-dict bytes / wall time (1e9 B/s), the slowest
rank's, barrier to barrier. Raw JSON lines go to results/bench-<stamp>.jsonl
as they are measured; --summarize rebuilds the tables from such a file.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
sys.path.insert(0, SCRIPTS)
import bench_report  # noqa: E402

PEER = os.path.join(SCRIPTS, "bench_peer_dcp.py")
RESHARD = os.path.join(SCRIPTS, "bench_dcp_reshard.py")
LIMITS = os.path.join(SCRIPTS, "bench_limits.sh")
APPS = os.path.join(ROOT, "build", "apps")
LAUNCH = os.path.join(APPS, "dcpp-launch")
WORKER = os.path.join(APPS, "dcpp-worker")
BENCH = os.path.join(APPS, "dcpp_bench")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's python3-torch (1.13)
MiB = 1 << 20
GROUPS = ("limits", "main", "reshard", "p16", "engine", "async")
ALIASES = {"save": "main", "load": "main"}


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def run(cmd, timeout=3600):
    """Runs `cmd`; returns (exit code, its JSON stdout lines, stderr)."""
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"  timed out after {timeout}s: {' '.join(cmd)}")
        return 124, [], ""
    recs = []
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    log(f"  [{time.time() - t:6.1f}s] rc={p.returncode} {' '.join(os.path.basename(c) for c in cmd[:4])} ...")
    if p.returncode != 0:
        log(p.stderr[-3000:])
    return p.returncode, recs, p.stderr


def drop_caches():
    """Empties the page cache (root); returns whether it could."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


class Runner:
    def __init__(self, args, out_path, parent):
        self.args = args
        self.out_path = out_path
        self.parent = parent
        self.layouts = {}
        self.threads = [] if args.threads is None else ["--threads", str(args.threads)]
        self.last_landing = None

    def emit(self, rec, **common):
        rec = dict(rec, **common)  # the programs' own size_mb, mode... give way
        with open(self.out_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.items()
                 if k in ("group", "impl", "world", "mode", "save_world", "save_GBps", "load_cold_GBps",
                          "load_warm_GBps", "alloc_s", "alloc", "verified", "skipped", "error")}
        log(f"  -> {shown}")

    def layout(self, size):
        if size not in self.layouts:
            p = subprocess.run([SYSTEM_PYTHON, PEER, "--print-layout", "--size-mb", str(size),
                                "--hidden", str(self.args.hidden)], capture_output=True, text=True, check=True)
            path = os.path.join(self.parent, f"layout_{size}.json")
            with open(path, "w") as f:
                f.write(p.stdout)
            self.layouts[size] = path
        return self.layouts[size]

    # ---- dcpp rank processes ------------------------------------------------
    def dcpp_op(self, op, world, mode, size, ckpt, verify=False):
        """One dcpp-worker save or load on `world` rank processes; returns
        (job seconds, max alloc seconds, error or None)."""
        cmd = [LAUNCH, "--nproc", str(world), "--", WORKER, op, "--dir", ckpt,
               "--layout-file", self.layout(size), "--layout", "row" if mode == "sharded" else "replicated",
               "--json", "--quiet"] + self.threads + (["--verify"] if verify else [])
        rc, recs, err = run(cmd)
        recs = [r for r in recs if "rank" in r and "op" in r]
        if rc != 0 or len(recs) != world or not all(r.get("ok") for r in recs):
            why = next((r.get("error") for r in recs if not r.get("ok")), None) or err.strip()[-300:]
            return None, None, f"{op} on {world} ranks failed (rc {rc}): {why}"
        # Ranks on one host: from the last rank's start to the last rank's end
        # is what a barrier before and after would measure.
        job_s = max(r["end_unix"] for r in recs) - max(r["start_unix"] for r in recs)
        self.last_landing = recs[0].get("landing")
        return job_s, max(r.get("alloc_s", 0.0) for r in recs), None

    def dcpp_save_load(self, world, mode, size, ckpt, save=True):
        """Save (unless `save` is False), cold load with --verify, warm load."""
        gb = size * MiB / 1e9
        # dcpp-worker's destinations: at::zeros (its --alloc default).
        rec = {"impl": "dcpp", "world": world, "mode": mode, "alloc": "torch"}
        if save:
            shutil.rmtree(ckpt, ignore_errors=True)
            s, _, err = self.dcpp_op("save", world, mode, size, ckpt)
            if err:
                return dict(rec, error=err)
            rec.update(save_s=s, save_GBps=gb / s)
        rec["cache_drop"] = drop_caches()
        c, alloc, err = self.dcpp_op("load", world, mode, size, ckpt, verify=True)
        if err:
            return dict(rec, error=err, verified=False)
        w, _, err = self.dcpp_op("load", world, mode, size, ckpt, verify=self.args.verify_warm)
        if err:
            return dict(rec, error=err)
        rec.update(load_cold_s=c, load_cold_GBps=gb / c, load_warm_s=w, load_warm_GBps=gb / w,
                   alloc_s=alloc, verified=True, landing=self.last_landing)
        return rec

    # ---- groups ---------------------------------------------------------------
    def limits(self, size, common):
        rc, recs, _ = run(["bash", LIMITS, "--size-mb", str(size), "--reps", "1", "--dir", self.parent,
                           "--hidden", str(self.args.hidden)])
        for r in recs:
            self.emit(dict(r, impl="limit"), **common)

    def main_rows(self, size, common):
        for world in self.args.worlds:
            for mode in self.args.modes:
                log(f" {mode} world {world}: PyTorch DCP")
                rc, recs, _ = run([SYSTEM_PYTHON, PEER, "--world", str(world), f"--{mode}",
                                   "--size-mb", str(size), "--hidden", str(self.args.hidden), "--dir", self.parent])
                rec = recs[0] if recs else {"error": f"bench_peer_dcp.py exit {rc}"}
                self.emit(dict(rec, impl="dcp", world=world, mode=mode, alloc="torch"), **common)
                log(f" {mode} world {world}: dcpp")
                ckpt = os.path.join(self.parent, f"dcpp_w{world}_{mode}")
                self.emit(self.dcpp_save_load(world, mode, size, ckpt), **common)
                shutil.rmtree(ckpt, ignore_errors=True)

    def reshard(self, size, common):
        src = self.args.reshard_from
        for dst in self.args.reshard_to:
            for save_world, group in ((src, "reshard"), (dst, "reshard_ref")):
                log(f" {group} {save_world} -> {dst}: PyTorch DCP")
                rc, recs, _ = run([SYSTEM_PYTHON, RESHARD, "--save-world", str(save_world), "--load-world", str(dst),
                                   "--size-mb", str(size), "--hidden", str(self.args.hidden), "--dir", self.parent])
                rec = recs[0] if recs else {"error": f"bench_dcp_reshard.py exit {rc}"}
                self.emit(dict(rec, impl="dcp", world=dst, save_world=save_world, mode="sharded"),
                          **dict(common, group=group))
        ckpt = os.path.join(self.parent, f"dcpp_reshard_from{src}")
        shutil.rmtree(ckpt, ignore_errors=True)
        log(f" reshard: dcpp save on {src}")
        s, _, err = self.dcpp_op("save", src, "sharded", size, ckpt)
        for dst in self.args.reshard_to:
            log(f" reshard {src} -> {dst}: dcpp")
            rec = ({"impl": "dcpp", "error": err} if err else
                   self.dcpp_save_load(dst, "sharded", size, ckpt, save=False))
            self.emit(dict(rec, world=dst, save_world=src, mode="sharded"), **dict(common, group="reshard"))
            log(f" reshard_ref {dst} -> {dst}: dcpp")
            ref = os.path.join(self.parent, f"dcpp_ref{dst}")
            rec = self.dcpp_save_load(dst, "sharded", size, ref)
            self.emit(dict(rec, save_world=dst), **dict(common, group="reshard_ref"))
            shutil.rmtree(ref, ignore_errors=True)
        shutil.rmtree(ckpt, ignore_errors=True)

    def p16(self, size, common):
        size = self.args.p16_size
        log(f" p16: dcpp, 16 rank processes, {size} MiB")
        ckpt = os.path.join(self.parent, "dcpp_p16")
        rec = self.dcpp_save_load(16, "sharded", size, ckpt)
        self.emit(rec, **dict(common, size_mb=size))
        shutil.rmtree(ckpt, ignore_errors=True)

    def engine(self, size, common):
        for alloc in ("huge", "torch"):
            rc, recs, _ = run([BENCH, "--layout", self.layout(size), "--dir", self.parent, "--alloc", alloc]
                              + self.threads)
            rec = recs[0] if recs else {"error": f"dcpp_bench --alloc {alloc} exit {rc}"}
            self.emit(dict(rec, impl="dcpp_bench", world=1, mode="plain", alloc=alloc), **common)

    def async_save(self, size, common):
        if not async_supported():
            why = "dcpp_bench --help lists no --async-saves (no async mode in this build)"
            log(f" async: skipped ({why})")
            self.emit({"impl": "dcpp_bench", "skipped": why}, **common)
            return
        rc, recs, _ = run([BENCH, "--async-saves", str(self.args.async_saves), "--layout", self.layout(size),
                           "--dir", self.parent] + self.threads)
        if not recs:
            self.emit({"impl": "dcpp_bench", "error": f"dcpp_bench --async-saves exit {rc}"}, **common)
        for r in recs:
            self.emit(dict(r, impl="dcpp_bench", world=1), **common)


def async_supported():
    """Whether this dcpp_bench has the async save mode (--async-saves N)."""
    p = subprocess.run([BENCH, "--help"], capture_output=True, text=True)
    return "--async-saves" in p.stdout


def parse_list(text, conv=int):
    return [conv(x) for x in text.split(",") if x.strip()]


def main():
    # Debian's python3 has torch 1.13 and matplotlib; another python3 on PATH
    # (pyenv, a venv) may have neither.
    if os.path.realpath(sys.executable) != os.path.realpath(SYSTEM_PYTHON) and os.path.exists(SYSTEM_PYTHON):
        os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON] + sys.argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1024", help="state-dict sizes in MiB, comma-separated")
    ap.add_argument("--worlds", default="1,2,4", help="world sizes of the main rows")
    ap.add_argument("--modes", default="sharded,replicated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(GROUPS),
                    help=f"groups to run: {','.join(GROUPS)} (save and load mean main)")
    ap.add_argument("--hidden", type=int, default=1024, help="hidden size of the layout (smaller: more tensors)")
    ap.add_argument("--threads", type=int, default=None,
                    help="dcpp I/O threads per rank (default: the programs' own default)")
    ap.add_argument("--verify-warm", action="store_true",
                    help="dcpp: verify warm loads too (cold loads always are; verifying is not timed)")
    ap.add_argument("--reshard-from", type=int, default=2)
    ap.add_argument("--reshard-to", default="3,4")
    ap.add_argument("--async-saves", type=int, default=3, help="async saves per async row (at least 2)")
    ap.add_argument("--p16-size", type=int, default=1024, help="MiB saved and loaded by the 16-process row")
    ap.add_argument("--dir", default=None, help="parent dir for checkpoints (default: a temp dir under /tmp)")
    ap.add_argument("--out", default=None, help="JSON lines file (default: results/bench-<stamp>.jsonl)")
    ap.add_argument("--summarize", metavar="FILE.jsonl", nargs="+",
                    help="no runs: the tables of saved runs (several files: a run and its partial reruns)")
    ap.add_argument("--report", default=None, help="write the markdown tables here (between the bench markers "
                    "if the file has them, else the whole file)")
    ap.add_argument("--chart", default=None, help="write a PNG chart here")
    args = ap.parse_args()

    if args.summarize:
        records = bench_report.load(args.summarize)
        bench_report.publish(records, args.summarize, args.report, args.chart)
        return

    args.worlds = parse_list(args.worlds)
    args.modes = parse_list(args.modes, str)
    args.reshard_to = parse_list(args.reshard_to)
    only = {ALIASES.get(g, g) for g in parse_list(args.only, str)}
    unknown = only - set(GROUPS)
    if unknown:
        sys.exit(f"unknown --only groups: {','.join(sorted(unknown))} (known: {','.join(GROUPS)})")
    for prog in (LAUNCH, WORKER, BENCH):
        if not os.path.exists(prog):
            sys.exit(f"{prog} missing: run scripts/build.sh first")
    if os.geteuid() != 0:
        log("warning: not root, the page cache cannot be dropped: cold loads will be warm")

    parent = args.dir or tempfile.mkdtemp(prefix="dcpp-bench-")
    os.makedirs(parent, exist_ok=True)
    out_path = args.out or os.path.join(ROOT, "results", time.strftime("bench-%Y%m%d-%H%M%S.jsonl"))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    runner = Runner(args, out_path, parent)
    header = {"group": "run", "argv": sys.argv[1:], "host": platform.node(), "kernel": platform.release(),
              "cpus": os.cpu_count(), "mem_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
              "start": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    runner.emit(header)
    t_run = time.time()
    for rnd in range(args.rounds):
        for size in parse_list(args.sizes):
            log(f"round {rnd + 1}/{args.rounds}, {size} MiB ({time.time() - t_run:.0f}s so far)")
            for group in GROUPS:
                if group not in only:
                    continue
                common = {"group": group, "size_mb": size, "round": rnd}
                getattr(runner, {"async": "async_save", "main": "main_rows"}.get(group, group))(size, common)
    log(f"done in {time.time() - t_run:.0f}s; raw lines: {out_path}")
    if parent != args.dir:
        shutil.rmtree(parent, ignore_errors=True)
    bench_report.publish(bench_report.load([out_path]), [out_path], args.report, args.chart)


if __name__ == "__main__":
    main()
