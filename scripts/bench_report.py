"""Tables and a chart from scripts/bench.py's JSON lines.

load(path) reads the lines; publish(records, source, report, chart) prints
the markdown tables, writes them into `report` (between the markers
BEGIN/END below if the file has them, else as the whole file) and draws
`chart` (PNG). Cells are the median over rounds with (min-max); ratios are
taken within a round, then their median.
"""
import json
import math
import os
import statistics

MiB = 1 << 20
BEGIN = "<!-- bench.py report: begin (generated, do not edit by hand) -->"
END = "<!-- bench.py report: end -->"

# The targets of issue 13: (row kind, label, numerator, denominator, bound, at least?)
TARGETS = [
    ("save", "save / PyTorch DCP", "save_GBps", ("dcp", "save_GBps"), 3.0, True),
    ("save", "save / O_DIRECT write limit", "save_GBps", ("limit", "write_direct"), 0.9, True),
    ("cold", "cold load / PyTorch DCP", "load_cold_GBps", ("dcp", "load_cold_GBps"), 1.3, True),
    ("cold", "cold load / cold read limit", "load_cold_GBps", ("limit", "read_cold"), 0.9, True),
    ("warm", "warm load / PyTorch DCP", "load_warm_GBps", ("dcp", "load_warm_GBps"), 2.0, True),
    ("warm", "warm load / warm read limit", "load_warm_GBps", ("limit", "read_warm"), 0.8, True),
]
# Rank processes (at::zeros destinations) against dcpp_bench on the same layout
# in the same round, its tensors in huge pages: the engine's ceiling.
ENGINE_TARGETS = [
    ("cold load / dcpp_bench (huge pages), same layout", "load_cold_GBps", 0.9),
    ("warm load / dcpp_bench (huge pages), same layout", "load_warm_GBps", 0.8),
]
RESHARD_BOUND = 0.9
ASYNC_BLOCK_BOUND = 1.2
ASYNC_PEAK_BOUND = 2.0

LIMIT_LABELS = {
    "write_direct": "dd write, O_DIRECT",
    "write_fdatasync": "dd write + fdatasync",
    "write_buffered": "dd write, buffered (page cache)",
    "writefiles_fsync": "DCP file layout written raw, fsync each",
    "read_cold": "DCP file layout, cold read(2) into huge pages",
    "read_warm": "DCP file layout, warm read(2) into huge pages",
    "read_cold_4k": "DCP file layout, cold read(2) into touched 4 KiB pages (as at::zeros memory)",
    "read_warm_4k": "DCP file layout, warm read(2) into touched 4 KiB pages (as at::zeros memory)",
    "dd_read_cold": "dd read, cold",
    "memcpy_1t": "memcpy, 1 thread",
    "memcpy_2t": "memcpy, 2 threads",
    "first_touch_4k": "first touch of fresh memory, 4 KiB pages",
    "first_touch_thp_madvise": "first touch of fresh memory, huge pages",
}


def load(paths):
    """The records of one or more JSON lines files, in order."""
    records = []
    for path in paths:
        with open(path) as f:
            records += [json.loads(line) for line in f if line.startswith("{")]
    return records


def limit_values(rec):
    """{name: GB/s} of one bench_limits.sh line."""
    b = rec.get("bench")
    if b in ("dd_write_direct", "dd_write_fdatasync", "dd_write_buffered", "dd_read_cold", "dd_read_warm"):
        return {b[3:] if b.startswith("dd_write") else b: rec["GBps"]}
    if b == "writefiles":
        return {"writefiles_fsync" if rec["fsync_each"] else "writefiles_nosync": rec["GBps"]}
    if b == "readfiles":
        name = "read_cold" if rec["cold"] else "read_warm"
        return {name if rec["dst_pages"] == "thp_madvise" else name + "_4k": rec["GBps"]}
    if b == "memcpy":
        return {f"memcpy_{rec['threads']}t": rec["median_GBps"]}
    if b == "first_touch":
        return {f"first_touch_{rec['pages']}": rec["first_touch_GBps"]}
    return {}


def alloc_of(rec):
    """Where a row's tensors lived: "torch" (PyTorch's allocator) or "huge" (dcpp's huge pages); rows of
    runs before the field existed: dcpp_bench used huge pages, everything else PyTorch's memory."""
    return rec.get("alloc", "huge" if rec.get("impl") == "dcpp_bench" else "torch")


def med(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else None


def cell(xs, digits=3):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{med(xs):.{digits}f} ({min(xs):.{digits - 1}f}-{max(xs):.{digits - 1}f})"


class Run:
    """The records of one bench.py run, indexed for the tables."""

    def __init__(self, records):
        self.header = next((r for r in records if r.get("group") == "run"), {})
        self.rows = [r for r in records if r.get("group") not in ("run", "limits", None)]
        self.limits = {}  # (size, round) -> {name: GB/s}
        for r in records:
            if r.get("group") == "limits":
                self.limits.setdefault((r["size_mb"], r["round"]), {}).update(limit_values(r))
        self.sizes = sorted({r["size_mb"] for r in records if "size_mb" in r and r.get("group") != "p16"})
        self.rounds = sorted({r["round"] for r in records if "round" in r})

    def find(self, group, impl, size, world=None, mode=None, rnd=None, save_world=None, alloc=None):
        return [r for r in self.rows
                if r["group"] == group and r.get("impl") == impl and r.get("size_mb") == size
                and (world is None or r.get("world") == world) and (mode is None or r.get("mode") == mode)
                and (rnd is None or r.get("round") == rnd)
                and (save_world is None or r.get("save_world") == save_world)
                and (alloc is None or alloc_of(r) == alloc)
                and "error" not in r and "skipped" not in r]

    def limit(self, name, size, rnd):
        """The limit measured in round `rnd`, else the median over the run's rounds."""
        v = self.limits.get((size, rnd), {}).get(name)
        if v is not None:
            return v
        return med([lim.get(name) for (s, _), lim in self.limits.items() if s == size])

    def configs(self, group):
        """(world, mode, save_world) of the dcpp rows of `group`, sorted."""
        keys = {(r.get("world"), r.get("mode"), r.get("save_world")) for r in self.rows
                if r["group"] == group and r.get("impl") in ("dcpp", "dcpp_bench")}
        return sorted(keys, key=lambda k: (k[0] or 0, str(k[1]), k[2] or 0))


def ratio(a, b):
    return a / b if a and b else None


ALLOC_NAMES = {"torch": "at::zeros (4 KiB pages)", "huge": "dcpp huge pages"}


def landing_cell(rs):
    """The landing path(s) the loads of `rs` took (storage/landing.hpp)."""
    modes = sorted({(r.get("landing") or {}).get("mode") for r in rs} - {None})
    return "/".join(modes) if modes else "-"


def throughput_table(run):
    out = ["| size MiB | row | world | layout | impl | destination | landing | save GB/s | load cold GB/s "
           "| load warm GB/s | alloc s (fresh process) | verified |",
           "|---:|---|---:|---|---|---|---|---:|---:|---:|---:|---|"]
    names = {"dcp": "PyTorch DCP 1.13", "dcpp": "dcpp", "dcpp_bench": "dcpp_bench (1 process)"}
    for group in ("main", "reshard", "reshard_ref", "p16", "engine"):
        sizes = sorted({r["size_mb"] for r in run.rows if r["group"] == group})
        allocs = sorted({alloc_of(r) for r in run.rows if r["group"] == group})
        for size in sizes:
            for world, mode, save_world in run.configs(group):
                for impl in ("dcp", "dcpp", "dcpp_bench"):
                    for alloc in allocs:
                        rs = run.find(group, impl, size, world, mode, save_world=save_world, alloc=alloc)
                        if not rs:
                            continue
                        label = {"reshard": f"saved on {save_world}", "reshard_ref": f"saved on {save_world}"}.get(
                            group, group)
                        ver = all(r.get("verified", False) for r in rs)
                        out.append(f"| {size} | {label} | {world} | {mode} | {names[impl]} "
                                   f"| {ALLOC_NAMES.get(alloc, alloc)} "
                                   f"| {landing_cell(rs) if impl != 'dcp' else '-'} "
                                   f"| {cell([r.get('save_GBps') for r in rs])} "
                                   f"| {cell([r.get('load_cold_GBps') for r in rs])} "
                                   f"| {cell([r.get('load_warm_GBps') for r in rs])} "
                                   f"| {cell([r.get('alloc_s') for r in rs], 2)} | {ver} (n={len(rs)}) |")
    failed = [r for r in run.rows if "error" in r]
    for r in failed:
        out.append(f"| {r.get('size_mb')} | {r['group']} | {r.get('world')} | {r.get('mode')} "
                   f"| {names.get(r.get('impl'), r.get('impl'))} | | | failed: {r['error'][:80]} | | | | |")
    return out


def target_rows(run):
    """(size, what, world, layout, [same-round ratios], bound, at_least) for every target."""
    rows = []
    for size in run.sizes:
        for world, mode, _ in run.configs("main"):
            for _, label, key, (ref_impl, ref_key), bound, at_least in TARGETS:
                xs = []
                for rnd in run.rounds:
                    mine = run.find("main", "dcpp", size, world, mode, rnd)
                    if not mine:
                        continue
                    if ref_impl == "dcp":
                        ref = run.find("main", "dcp", size, world, mode, rnd)
                        ref_v = ref[0].get(ref_key) if ref else None
                    else:
                        ref_v = run.limit(ref_key, size, rnd)
                    xs.append(ratio(mine[0].get(key), ref_v))
                rows.append((size, label, world, mode, [x for x in xs if x is not None], bound, at_least))
            for label, key, bound in ENGINE_TARGETS:
                xs = []
                for rnd in run.rounds:
                    mine = run.find("main", "dcpp", size, world, mode, rnd)
                    ref = run.find("engine", "dcpp_bench", size, rnd=rnd, alloc="huge")
                    if mine and ref:
                        xs.append(ratio(mine[0].get(key), ref[0].get(key)))
                if any(run.find("engine", "dcpp_bench", size)):
                    rows.append((size, label, world, mode, [x for x in xs if x is not None], bound, True))
        for world, mode, save_world in run.configs("reshard"):
            for key, what in (("load_cold_GBps", "cold"), ("load_warm_GBps", "warm")):
                xs = []
                for rnd in run.rounds:
                    mine = run.find("reshard", "dcpp", size, world, mode, rnd, save_world)
                    ref = run.find("reshard_ref", "dcpp", size, world, mode, rnd)
                    if mine and ref:
                        xs.append(ratio(mine[0].get(key), ref[0].get(key)))
                rows.append((size, f"{what} load saved on {save_world} / saved on {world}", world, mode,
                             [x for x in xs if x is not None], RESHARD_BOUND, True))
        asyncs = [r for r in run.rows if r["group"] == "async" and r.get("size_mb") == size
                  and "error" not in r and "skipped" not in r]
        if asyncs:
            block = [r.get("block_over_memcpy") or ratio(r.get("block_later_median_s"), r.get("memcpy_median_s"))
                     for r in asyncs]
            peak = [r.get("peak_over_state") for r in asyncs]
            rows.append((size, "async save blocking / memcpy", 1, "plain", [x for x in block if x], 
                         ASYNC_BLOCK_BOUND, False))
            rows.append((size, "async save peak memory / state dict", 1, "plain", [x for x in peak if x],
                         ASYNC_PEAK_BOUND, False))
    return rows


def targets_table(run):
    out = ["| size MiB | measure (same-round ratio) | world | layout | median (min-max) | target | result |",
           "|---:|---|---:|---|---:|---:|---|"]
    for size, label, world, mode, xs, bound, at_least in target_rows(run):
        m = med(xs)
        result = "-" if m is None else ("pass" if (m >= bound if at_least else m <= bound) else "miss")
        out.append(f"| {size} | {label} | {world} | {mode} | {cell(xs, 2)} "
                   f"| {'>=' if at_least else '<='} {bound:g} | {result} |")
    skipped = {r["skipped"] for r in run.rows if "skipped" in r}
    for why in sorted(skipped):
        out.append(f"| | async save | | | skipped: {why} | | - |")
    return out


def limits_table(run):
    out = ["| size MiB | limit (same bytes) | GB/s |", "|---:|---|---:|"]
    for size in run.sizes:
        for name, label in LIMIT_LABELS.items():
            xs = [lim[name] for (s, _), lim in sorted(run.limits.items()) if s == size and name in lim]
            if xs:
                out.append(f"| {size} | {label} | {cell(xs)} |")
    return out


def async_table(run):
    rs = [r for r in run.rows if r["group"] == "async" and "error" not in r and "skipped" not in r]
    if not rs:
        return []
    out = ["| size MiB | first save blocks s | later saves block s | memcpy s | to durable s "
           "| peak RSS GiB | peak / state dict | verified |",
           "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for size in run.sizes:
        xs = [r for r in rs if r.get("size_mb") == size]
        if xs:
            out.append(f"| {size} | {cell([r.get('block_first_s') for r in xs])} "
                       f"| {cell([r.get('block_later_median_s') for r in xs])} "
                       f"| {cell([r.get('memcpy_median_s') for r in xs])} "
                       f"| {cell([r.get('durable_later_median_s') for r in xs])} "
                       f"| {cell([r.get('peak_rss_bytes', 0) / (1 << 30) for r in xs], 2)} "
                       f"| {cell([r.get('peak_over_state') for r in xs], 2)} "
                       f"| {all(r.get('verified', False) for r in xs)} |")
    return out


def markdown(run, sources):
    h = run.header
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shown = ", ".join(f"`{os.path.relpath(os.path.abspath(p), root)}`" if os.path.abspath(p).startswith(root + os.sep)
                      else f"`{p}`" for p in sources)
    lines = [BEGIN, "",
             f"Run of {h.get('start', '?')}: `python3 scripts/bench.py {' '.join(h.get('argv', []))}` on "
             f"{h.get('cpus', '?')} CPUs, {h.get('mem_bytes', 0) / (1 << 30):.0f} GiB, kernel {h.get('kernel', '?')}; "
             f"{len(run.rounds)} round(s). Raw lines: {shown} (not committed).",
             "GB/s = 1e9 bytes of logical state dict per second; cells are median (min-max) over rounds.", "",
             "### Targets (issues 13 and 22)", ""] + targets_table(run) + [
             "", "### Throughput", ""] + throughput_table(run)
    a = async_table(run)
    if a:
        lines += ["", "### Async save (dcpp_bench --async-saves)", ""] + a
    lines += ["", "### Limits of this machine for the same bytes (bench_limits.sh)", ""] + limits_table(run)
    lines += ["", END]
    return lines


def write_report(lines, path):
    text = "\n".join(lines) + "\n"
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if BEGIN in old and END in old:
            text = old[:old.index(BEGIN)] + text.rstrip("\n") + old[old.index(END) + len(END):]
    with open(path, "w") as f:
        f.write(text)


def _bars(ax, groups, series):
    """Grouped bars with min-max whiskers: `series` is [(label, color, [values per group])],
    each values entry a list over rounds."""
    width = 0.8 / len(series)
    for i, (label, color, per_group) in enumerate(series):
        xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(groups))]
        mids = [med(v) or 0 for v in per_group]
        lo = [m - min(v) if v else 0 for m, v in zip(mids, per_group)]
        hi = [max(v) - m if v else 0 for m, v in zip(mids, per_group)]
        ax.bar(xs, mids, width=width, label=label, color=color, yerr=[lo, hi], capsize=2,
               error_kw={"elinewidth": 0.8})
    ax.set_xticks(list(range(len(groups))))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel("GB/s (median, min-max)")


def draw_chart(run, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(run.sizes) if run.sizes else None
    configs = [(w, m) for w, m, _ in run.configs("main")]
    if size is None or not configs:
        return False
    impls = (("dcp", "PyTorch DCP 1.13", "tab:gray"), ("dcpp", "dcpp", "tab:blue"))
    metrics = (("save_GBps", "save", "write_direct"), ("load_cold_GBps", "cold load", "read_cold"),
               ("load_warm_GBps", "warm load", "read_warm"))
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    for ax, (key, title, lim) in zip(axes.flat, metrics):
        _bars(ax, [f"w{w}\n{m}" for w, m in configs],
              [(label, color, [[r[key] for r in run.find("main", impl, size, w, m) if r.get(key)]
                               for w, m in configs]) for impl, label, color in impls])
        limit = med([run.limit(lim, size, rnd) for rnd in run.rounds])
        if limit:
            ax.axhline(limit, color="tab:red", linestyle="--", linewidth=1, label=f"limit: {LIMIT_LABELS[lim]}")
        ax.set_title(f"{title}, {size} MiB")
        ax.legend(fontsize=7)
    ax = axes.flat[3]
    # (loaded on, saved on): every resharded load beside its same-layout reference
    resharded = run.configs("reshard")
    loads = sorted({(w, s) for w, _, s in resharded} | {(w, w) for w, _, _ in resharded})
    if loads:
        series = []
        for impl, label, color in impls:
            for key, what, alpha in (("load_cold_GBps", "cold", 0.55), ("load_warm_GBps", "warm", 1.0)):
                vals = []
                for world, save_world in loads:
                    group = "reshard" if save_world != world else "reshard_ref"
                    vals.append([r[key] for r in run.find(group, impl, size, world, "sharded",
                                                          save_world=save_world) if r.get(key)])
                series.append((f"{label} {what}", matplotlib.colors.to_rgba(color, alpha), vals))
        _bars(ax, [f"saved on {s}\nloaded on {w}" for w, s in loads], series)
        ax.set_title(f"resharded loads (sharded), {size} MiB")
        ax.legend(fontsize=7)
    else:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def publish(records, sources, report=None, chart=None):
    run = Run(records)
    lines = markdown(run, sources)
    print("\n".join(lines[1:-1]))
    if report:
        write_report(lines, report)
        print(f"\nreport: {report}")
    if chart:
        try:
            if draw_chart(run, chart):
                print(f"chart: {chart}")
            else:
                print("chart skipped: no main rows (save and loads of both systems) in this run")
        except ImportError:
            print("chart skipped: matplotlib missing (scripts/install-deps.sh installs python3-matplotlib)")
