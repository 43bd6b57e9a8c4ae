#!/usr/bin/env python3
"""`dcpp import` of a torch.save file written by PyTorch 2.6, then `dcpp
export` (nested and --flat), loaded back by PyTorch 2.6 with its default
`torch.load(weights_only=True)`.

    export_test.py BUILD_APPS_DIR SCRATCH

The input holds what a user's torch.save holds: nested dicts, an
OrderedDict, lists, views of one storage, every dtype 1.13 has, ints,
floats, str, None, tuples, `torch.Size` and `torch.dtype` values, and a
model with Adam state. The export must load in 2.6 without any global
outside its weights-only allow-list and give back the input (OrderedDicts
as dicts, as DCP's flattening records no container class): `torch.Size`
as a `torch.Size`, a dtype as that dtype.

PyTorch 2.6 runs through scripts/torch2/run.sh ($DCPP_TORCH2_RUN, in the
chroot at $DCPP_TORCH2_ROOT); exits 77 with its reason without one.
"""
import os
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
apps, scratch_root = sys.argv[1], sys.argv[2]
dcpp = os.path.join(apps, "dcpp")
run_sh = os.environ.get("DCPP_TORCH2_RUN") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
    "torch2", "run.sh")
# The exact comparison of nested values, shared with the 1.13 tests; bound
# into the chroot at the same path.
interop = os.path.realpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
    "interop"))


def fail(msg):
    print("FAILED: " + msg)
    sys.exit(1)


def torch2(scratch, code, *args):
    """Runs `code` with PyTorch 2.6's python3 in the chroot, `scratch`
    bound at the same path inside."""
    script = os.path.join(scratch, "torch2_script.py")
    with open(script, "w") as f:
        f.write(code)
    cmd = ["bash", run_sh, "--bind", scratch, "--bind", interop, "--",
           "python3", script, interop, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def run_dcpp(*args):
    cmd = [dcpp, *args]
    print("$", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    sys.stdout.write(p.stdout + p.stderr)
    if p.returncode != 0:
        fail(f"{' '.join(args[:1])} exited with {p.returncode}")
    return p


COMMON = r'''
import sys, collections, torch
sys.path.insert(0, sys.argv.pop(1))
from state_trees import first_difference as diff, plain

def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                               torch.nn.ReLU(), torch.nn.Linear(8, 2))

def make():
    x = torch.arange(-3, 5)
    base = torch.arange(20.0).reshape(4, 5)
    m = model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m(torch.randn(5, 4)).sum().backward()
    opt.step()
    return {
        "dtypes": {"float64": x.double() / 3, "float32": x.float() / 3,
                   "float16": x.half() / 4, "bfloat16": x.bfloat16() / 4,
                   "int8": x.to(torch.int8), "int16": x.to(torch.int16) * 300,
                   "int32": x.int() * 70000, "int64": x.long() << 40,
                   "uint8": (x + 3).to(torch.uint8) * 30, "bool": x > 0,
                   "complex64": torch.complex(x.float(), -x.float()),
                   "complex128": torch.complex(x.double(), x.double() / 7)},
        "views": {"base": base, "row": base[1], "t": base.t(),
                  "strided": base[::2, ::2], "scalar": base[2, 3]},
        "ordered": collections.OrderedDict([("b", torch.ones(2)), ("a", 1)]),
        "list": [torch.zeros(3), {"deep": torch.eye(2)}],
        "values": {"int": 7, "float": 0.25, "str": "text", "none": None,
                   "tuple": (1, "two", 3.0), "big": 1 << 40,
                   "size": torch.Size([3, 4]), "empty_size": torch.Size([]),
                   "dtype": torch.float32, "dtype2": torch.bfloat16,
                   "sizes": [torch.Size([1]), torch.int64]},
        "model": m.state_dict(),
        "optim": opt.state_dict(),
    }

'''

SAVE = COMMON + r'''
torch.save(make(), sys.argv[1])
print("torch", torch.__version__, "saved", sys.argv[1])
'''

CHECK = COMMON + r'''
nested, flat = sys.argv[1], sys.argv[2]
print("torch", torch.__version__)
got = torch.load(nested)  # weights_only=True: 2.6's default
want = plain(make())
# dcpp_to_torch_save gives optimizer state keys back as ints; the export
# does the same (restore_optimizer_keys).
d = diff(got, want)
if d:
    sys.exit(f"export differs from the input at {d}")
print("ok: nested export loads with weights_only=True, equal to the input")
got = torch.load(flat, weights_only=True)
if not isinstance(got, dict) or "values.size" not in got \
        or type(got["values.size"]) is not torch.Size \
        or got["values.dtype"] is not torch.float32:
    sys.exit(f"flat export: {sorted(got)[:8]} ...")
print(f"ok: --flat export loads with weights_only=True ({len(got)} keys)")
'''


def main():
    os.makedirs(scratch_root, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="export-", dir=scratch_root)
    try:
        src = os.path.join(scratch, "in.pt")
        r = torch2(scratch, SAVE, src)
        if r.returncode == SKIP:
            print(r.stdout + r.stderr)
            return SKIP
        if r.returncode != 0:
            fail(f"torch 2.6 save: {r.stdout}{r.stderr}")
        print(r.stdout.strip())
        ckpt = os.path.join(scratch, "ckpt")
        run_dcpp("import", src, ckpt)
        nested = os.path.join(scratch, "out.pt")
        flat = os.path.join(scratch, "flat.pt")
        run_dcpp("export", ckpt, nested)
        run_dcpp("export", "--flat", ckpt, flat)
        r = torch2(scratch, CHECK, nested, flat)
        sys.stdout.write(r.stdout + r.stderr)
        if r.returncode != 0:
            fail("PyTorch 2.6 refused or misread the export")
        print("PASSED")
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


sys.exit(main())
