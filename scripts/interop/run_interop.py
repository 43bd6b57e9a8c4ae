#!/usr/bin/env python3
"""One interoperability case between dcpp and PyTorch 1.13 DCP.

    run_interop.py --tool BUILD/tests/e2e/interop_tool --python /usr/bin/python3
                   --scratch DIR --writer dcpp|torch --save-world W --save-layout L
                   --reader dcpp|torch --load-world M --load-layout L2
                   [--flavor 1.13|2] [--threads T] [--coordinator C] [--per-item]
                   [--seed K] [--size-mb S]

The writer saves the synthetic model (apps/synthetic.hpp, synthetic.py) with
W ranks; the reader loads it with M ranks in another sharding and checks
every value bit for bit. --load-world may list several worlds (1,2,3): one
save, a load on each. Exit 0 on success, 1 on failure, 77 (with the
reason printed) when torch DCP cannot be imported here.

--torch-run RUN.sh runs the torch side (peer.py and the export checks)
through scripts/torch2/run.sh, i.e. with PyTorch 2.6 in its chroot
(--python is then the chroot's python3); the scratch folder and this
folder are bound into it. Without it the torch side is --python on the
host (torch 1.13).
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
seed, size = int(sys.argv[3]), float(sys.argv[4])
if sys.argv[6] == "dcp_to_torch_save":
    # PyTorch's own conversion of the checkpoint (torch >= 2.2).
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    dcp_to_torch_save(sys.argv[7], sys.argv[2])
if torch.__version__ >= "2":
    # 2.x's default; what every file meant for PyTorch must pass.
    d = torch.load(sys.argv[2], weights_only=True)
else:
    d = torch.load(sys.argv[2])
def get(key):
    if key in d:
        return d[key]
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
print(sys.argv[6], "check:", sorted(d)[:8], "at the top,", "bad:", bad[:5])
sys.exit(1 if bad else 0)
"""


def run(cmd, what, fatal=True):
    """Runs `cmd`; on failure exits (fatal) or returns False."""
    print("$", " ".join(c if len(c) < 200 else "<script>" for c in cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    sys.stdout.write(p.stdout[-4000:])
    sys.stderr.write(p.stderr[-4000:])
    if p.returncode == SKIP:
        print(f"SKIP: {what}: {p.stdout.strip() or 'torch DCP unavailable'}")
        sys.exit(SKIP)
    if p.returncode != 0:
        print(f"FAILED: {what} exited with {p.returncode}")
        if fatal:
            sys.exit(1)
        return False
    return True


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
    ap.add_argument("--reader", choices=["dcpp", "torch", "workers"], required=True,
                    help="workers: dcpp-launch + dcpp-worker load --verify")
    ap.add_argument("--torch-run", help="scripts/torch2/run.sh: the torch side "
                    "runs in the PyTorch 2.6 chroot")
    ap.add_argument("--dcp-to-torch-save", action="store_true",
                    help="also convert the checkpoint with torch's "
                    "dcp_to_torch_save and check the .pt (torch >= 2)")
    ap.add_argument("--save-world", type=int, required=True)
    ap.add_argument("--load-world", required=True,
                    help="a world, or several separated by commas")
    ap.add_argument("--save-layout", required=True)
    ap.add_argument("--load-layout", required=True)
    ap.add_argument("--flavor", default="2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--coordinator", type=int, default=0)
    ap.add_argument("--per-item", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--size-mb", type=float, default=3)
    args = ap.parse_args()

    ckpt = os.path.join(args.scratch, "ckpt")
    shutil.rmtree(args.scratch, ignore_errors=True)
    os.makedirs(args.scratch)
    # The torch side's interpreter: the host's, or 2.6's in its chroot.
    python = [args.python]
    if args.torch_run:
        python = [args.torch_run, "--bind", args.scratch, "--bind", HERE,
                  "--cwd", args.scratch, "--", args.python]
        probe_code = "import torch.distributed.checkpoint"
    else:
        probe_code = "import sys; sys.path.insert(0, %r); import torch113_compat" % HERE
    # Probe torch first so a missing torch is a visible skip, not a failure.
    probe = subprocess.run(python + ["-c", probe_code], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"SKIP: torch DCP cannot be imported by {' '.join(python)}: "
              f"{probe.stderr.strip().splitlines()[-1:] or probe.returncode}")
        sys.exit(SKIP)
    load_worlds = [int(w) for w in args.load_world.split(",")]
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
        run(python + [os.path.join(HERE, "peer.py"), "save", ckpt, "--world", str(args.save_world),
             "--layout", args.save_layout] + ([] if args.per_item else ["--per-rank"]) + common,
            "torch save")
    files = sorted(os.listdir(ckpt))
    print("checkpoint files:", ", ".join(files))
    if ".metadata" not in files:
        print("FAILED: no .metadata after the save")
        sys.exit(1)
    if args.reader == "torch":
        # One interpreter for every world (torch's import is the slow part).
        run(python + [os.path.join(HERE, "peer.py"), "load", ckpt, "--world", args.load_world,
                      "--layout", args.load_layout] + common, "torch load")
    for world in load_worlds if args.reader != "torch" else []:
        if args.reader == "dcpp":
            run([args.tool, "load", ckpt, "--world", str(world), "--layout", args.load_layout]
                + common, f"dcpp load on {world} ranks")
        else:
            run([args.launch, "--nproc", str(world), "--", args.worker, "load", "--dir", ckpt,
                 "--layout", args.load_layout, "--verify", "--quiet"] + common,
                f"dcpp-worker load --verify on {world} ranks")
    checks = []
    if args.cli:
        pt = os.path.join(args.scratch, "export.pt")
        run([args.cli, "export", ckpt, pt], "dcpp export")
        checks.append(("export", pt, "torch.load of the export"))
    if args.dcp_to_torch_save:
        checks.append(("dcp_to_torch_save", os.path.join(args.scratch, "converted.pt"),
                       "dcp_to_torch_save + torch.load"))
    # Every check runs, so that one failing does not hide the others.
    failed = [what for mode, pt, what in checks
              if not run(python + ["-c", EXPORT_CHECK, HERE, pt, str(args.seed),
                                   str(args.size_mb), args.save_layout, mode, ckpt],
                         what, fatal=False)]
    if failed:
        print("FAILED: " + "; ".join(failed))
        sys.exit(1)
    print(f"PASSED: {args.writer} w{args.save_world} {args.save_layout} -> "
          f"{args.reader} w{args.load_world} {args.load_layout}"
          + "".join(f", {m}" for m, _, _ in checks))


if __name__ == "__main__":
    main()
