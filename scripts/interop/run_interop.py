#!/usr/bin/env python3
"""One interoperability case between dcpp and PyTorch 1.13 DCP.

    run_interop.py --tool BUILD/tests/e2e/interop_tool --python /usr/bin/python3
                   --scratch DIR --writer dcpp|torch --save-world W --save-layout L
                   --reader dcpp|torch --load-world M --load-layout L2
                   [--flavor 1.13|2] [--threads T] [--coordinator C] [--per-item]
                   [--seed K] [--size-mb S]

The writer saves the synthetic model (apps/synthetic.hpp, synthetic.py) with
W ranks; the reader loads it with M ranks in another sharding and checks
every value bit for bit. Exit 0 on success, 1 on failure, 77 (with the
reason printed) when torch 1.13 DCP cannot be imported here.
"""
import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SKIP = 77


# Loads the exported .pt (nested as the state dict was saved: `dcpp export`
# rebuilds the nesting from the flatten mapping) and checks every tensor of
# the synthetic model in full, and the two bytes values.
EXPORT_CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
import torch, synthetic
d = torch.load(sys.argv[2])
seed, size = int(sys.argv[3]), float(sys.argv[4])
def get(key):
    node = d
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node
bad = []
for key, shape, dtype, _ in synthetic.specs(size, sys.argv[5]):
    want = synthetic.expected_box(key, shape, [0] * len(shape), list(shape), dtype, seed)
    got = get(key)
    if not isinstance(got, torch.Tensor) or not torch.equal(got, want):
        bad.append(key)
if get("step") != synthetic.STEP_BASE + seed:
    bad.append("step")
if get("optim.param_groups") != synthetic.PARAM_GROUPS:
    bad.append("optim.param_groups")
print("export check:", sorted(d), "at the top,", "bad:", bad[:5])
sys.exit(1 if bad else 0)
"""


def run(cmd, what):
    print("$", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    sys.stdout.write(p.stdout[-4000:])
    sys.stderr.write(p.stderr[-4000:])
    if p.returncode == SKIP:
        print(f"SKIP: {what}: {p.stdout.strip() or 'torch 1.13 DCP unavailable'}")
        sys.exit(SKIP)
    if p.returncode != 0:
        print(f"FAILED: {what} exited with {p.returncode}")
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", required=True)
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--writer", choices=["dcpp", "torch", "workers"], required=True,
                    help="workers: dcpp-launch + dcpp-worker processes over ZeroMQ")
    ap.add_argument("--launch", help="dcpp-launch binary (writer 'workers')")
    ap.add_argument("--worker", help="dcpp-worker binary (writer 'workers')")
    ap.add_argument("--cli", help="dcpp binary: also export the checkpoint and "
                    "check the .pt with torch.load")
    ap.add_argument("--reader", choices=["dcpp", "torch"], required=True)
    ap.add_argument("--save-world", type=int, required=True)
    ap.add_argument("--load-world", type=int, required=True)
    ap.add_argument("--save-layout", required=True)
    ap.add_argument("--load-layout", required=True)
    ap.add_argument("--flavor", default="2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--coordinator", type=int, default=0)
    ap.add_argument("--per-item", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--size-mb", type=float, default=3)
    args = ap.parse_args()

    # Probe torch first so a missing torch is a visible skip, not a failure.
    probe = subprocess.run([args.python, "-c", "import sys; sys.path.insert(0, %r); "
                            "import torch113_compat" % HERE], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"SKIP: torch 1.13 DCP cannot be imported by {args.python}: "
              f"{probe.stderr.strip().splitlines()[-1:] or probe.returncode}")
        sys.exit(SKIP)

    ckpt = os.path.join(args.scratch, "ckpt")
    shutil.rmtree(args.scratch, ignore_errors=True)
    os.makedirs(args.scratch)
    common = ["--seed", str(args.seed), "--size-mb", str(args.size_mb)]
    if args.writer == "dcpp":
        run([args.tool, "save", ckpt, "--world", str(args.save_world), "--layout", args.save_layout,
             "--flavor", args.flavor, "--threads", str(args.threads),
             "--coordinator", str(args.coordinator)] + common, "dcpp save")
    elif args.writer == "workers":
        run([args.launch, "--nproc", str(args.save_world), "--", args.worker, "save", "--dir", ckpt,
             "--layout", args.save_layout, "--coordinator-rank", str(args.coordinator),
             "--threads", str(args.threads)] + common, "dcpp-worker save")
    else:
        run([args.python, os.path.join(HERE, "peer.py"), "save", ckpt, "--world", str(args.save_world),
             "--layout", args.save_layout] + ([] if args.per_item else ["--per-rank"]) + common,
            "torch save")
    files = sorted(os.listdir(ckpt))
    print("checkpoint files:", ", ".join(files))
    if ".metadata" not in files:
        print("FAILED: no .metadata after the save")
        sys.exit(1)
    if args.reader == "dcpp":
        run([args.tool, "load", ckpt, "--world", str(args.load_world), "--layout", args.load_layout]
            + common, "dcpp load")
    else:
        run([args.python, os.path.join(HERE, "peer.py"), "load", ckpt, "--world", str(args.load_world),
             "--layout", args.load_layout] + common, "torch load")
    if args.cli:
        pt = os.path.join(args.scratch, "export.pt")
        run([args.cli, "export", ckpt, pt], "dcpp export")
        run([args.python, "-c", EXPORT_CHECK, HERE, pt, str(args.seed), str(args.size_mb),
             args.save_layout], "torch.load of the export")
    print(f"PASSED: {args.writer} w{args.save_world} {args.save_layout} -> "
          f"{args.reader} w{args.load_world} {args.load_layout}")


if __name__ == "__main__":
    main()
