#!/usr/bin/env python3
"""PyTorch 2.6 reads what dcpp records of a state dict's structure.

    structure_test.py TRAINING_TOOL DCPP_CLI SCRATCH

Run with PyTorch 2.6's Python (inside the chroot of scripts/torch2, whose
/opt/dcpp/host-exec runs dcpp's programs on the host). Three checks:

1. List positions survive async saves: `training_interop_tool async-save`
   (the staging pool) and `save` write the same C++ Module + Adam after 3
   steps; 2.6's `dcp_to_torch_save` of each rebuilds `optim.param_groups`
   as a list, and both exports are equal.
2. `planner_data` of a flat `dcpp import` is `{fqn: (fqn,)}` in both
   .metadata flavors, and 2.6's `dcp_to_torch_save` of it (flavor 2)
   rebuilds the flat dict PyTorch saved.
3. Optimizer state loads strictly: `get_state_dict` + `dcp.load` (no
   partial load) + `set_state_dict` of the dcpp checkpoint into a Python
   Module + Adam gives Python's own 3-step state, and the 4th step agrees;
   a 2.6 checkpoint with `fused=True` is refused by dcpp naming
   `optim.param_groups.0.fused`, one with Python's defaults resumes.

Exit 0 on success, 1 on failure, 77 (printing why) without PyTorch >= 2.4
DCP or the host-exec helper.
"""
import os
import shutil
import subprocess
import sys

SKIP = 77
HOST_EXEC = "/opt/dcpp/host-exec"

tool, cli, scratch = sys.argv[1], sys.argv[2], sys.argv[3]

try:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "..", "..", "scripts", "interop"))
    import torch
    from training_model import make_adam, make_model, train_step
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from torch.distributed.checkpoint.state_dict import (get_state_dict,
                                                         set_state_dict)
except Exception as e:  # noqa: BLE001
    print(f"SKIP: PyTorch 2.x DCP cannot be imported by {sys.executable}: {e!r}")
    sys.exit(SKIP)
if not os.access(HOST_EXEC, os.X_OK):
    print(f"SKIP: {HOST_EXEC} is missing: not inside scripts/torch2's chroot")
    sys.exit(SKIP)

print(f"torch {torch.__version__}")
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("MISMATCH: " + what)
    return cond


def host(*cmd, expect_ok=True):
    """Runs a dcpp program on the host; its exit code and output."""
    print("$", " ".join(cmd), flush=True)
    p = subprocess.run([HOST_EXEC, *cmd], capture_output=True, text=True,
                       timeout=120)
    out = p.stdout + p.stderr
    sys.stdout.write(out)
    if expect_ok and p.returncode != 0:
        print(f"FAILED: exit code {p.returncode}")
        sys.exit(1)
    return p.returncode, out


def same_tree(a, b, path="sd", rtol=0.0):
    """Equal structure (dict / list / tuple types) and values; tensors equal
    bit for bit, or within `rtol` of each other (`rtol` / 100 absolute)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape):
            return check(False, f"{path}: {a!r:.80} != {b!r:.80}")
        if rtol == 0.0:
            ok = torch.equal(a, b)
        else:
            ok = torch.allclose(a, b, rtol=rtol, atol=rtol * 1e-2)
        diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0
        return check(ok, f"{path}: max |diff| {diff:g}")
    if type(a) is not type(b):
        return check(False, f"{path}: {type(a).__name__} vs {type(b).__name__}")
    recurse = lambda x, y, where: same_tree(x, y, where, rtol)  # noqa: E731
    if isinstance(a, dict):
        # Key order is not compared: dcpp's .metadata lists keys sorted.
        if not check(sorted(a) == sorted(b),
                     f"{path}: keys {sorted(a)} vs {sorted(b)}"):
            return False
        return all([recurse(a[k], b[k], f"{path}[{k!r}]") for k in a])
    if isinstance(a, (list, tuple)):
        if not check(len(a) == len(b), f"{path}: {len(a)} vs {len(b)} items"):
            return False
        return all([recurse(x, y, f"{path}[{i}]")
                    for i, (x, y) in enumerate(zip(a, b))])
    return check(a == b, f"{path}: {a!r} != {b!r}")


def export(ckpt):
    out = ckpt + ".pt"
    dcp_to_torch_save(ckpt, out)
    return torch.load(out, weights_only=False)


# SCRATCH may be a mount point (bound into the chroot): empty it, keep it.
os.makedirs(scratch, exist_ok=True)
for entry in os.listdir(scratch):
    entry = os.path.join(scratch, entry)
    if os.path.isdir(entry):
        shutil.rmtree(entry)
    else:
        os.remove(entry)
path = lambda name: os.path.join(scratch, name)  # noqa: E731

# -- 1. async_save keeps list positions --------------------------------------
host(tool, "save", path("sync"), "3")
host(tool, "async-save", path("async"), "3")
exported = {}
for name in ("sync", "async"):
    sd = export(path(name))
    groups = sd["optim"]["param_groups"]
    if check(isinstance(groups, list),
             f"{name}: param_groups rebuilt as {type(groups).__name__}: "
             f"{groups!r:.200}"):
        print(f"PASSED: {name}: dcp_to_torch_save rebuilds param_groups as a "
              f"list of {len(groups)}")
    exported[name] = sd
if same_tree(exported["async"], exported["sync"]):
    print("PASSED: the async save exports equal to the synchronous one")

# -- 2. planner_data of a flat import ------------------------------------------
flat = {"weight": torch.arange(12, dtype=torch.float).reshape(3, 4),
        "bias": torch.ones(4, dtype=torch.float16),
        "steps": torch.tensor([1, 2, 3])}
torch.save(flat, path("flat_in.pt"))
want = {k: (k,) for k in flat}
for flavor in ("2", "1.13"):
    ckpt = path(f"flat_{flavor}")
    host(cli, "import", "--flavor", flavor, path("flat_in.pt"), ckpt)
    md = dcp.FileSystemReader(ckpt).read_metadata()
    if check(md.planner_data == want,
             f"flavor {flavor}: planner_data {md.planner_data!r} != {want!r}"):
        print(f"PASSED: flat import ({flavor} flavor): planner_data {want!r}")
# (2.6's planners refuse the 1.13 flavor's classes: isinstance fails.)
got = export(path("flat_2"))
if same_tree(got, flat, "flat"):
    print("PASSED: dcp_to_torch_save of the flat import gives the dict back")

# -- 3. strict set_state_dict, and dcpp refusing fused=True --------------------
ref = make_model()
ref_opt = make_adam(ref, 0.01)
for _ in range(3):
    train_step(ref, ref_opt)
ref_state = get_state_dict(ref, ref_opt)

for name in ("sync", "async"):
    py = make_model()
    py_opt = make_adam(py, 0.5)  # the checkpoint's lr must win
    msd, osd = get_state_dict(py, py_opt)
    state = {"model": msd, "optim": osd}
    try:
        dcp.load(state, checkpoint_id=path(name))  # strict: no partial load
        set_state_dict(py, py_opt, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
    except BaseException as e:  # noqa: BLE001 (CheckpointException)
        check(False, f"{name}: strict load into Module + Adam: {e!r}")
        continue
    # libtorch 1.13's Adam and 2.6's round differently in the last bits
    # (2.6 updates exp_avg with lerp_): values agree to 1e-5 (1e-7 near 0),
    # not bit for bit.
    ok = same_tree(get_state_dict(py, py_opt), ref_state, f"{name} state",
                   rtol=1e-5)
    train_step(py, py_opt)
    ref4 = make_model()
    ref4_opt = make_adam(ref4, 0.01)
    for _ in range(4):
        train_step(ref4, ref4_opt)
    ok = same_tree(get_state_dict(py, py_opt), get_state_dict(ref4, ref4_opt),
                   f"{name} after one more step", rtol=1e-5) and ok
    if ok:
        print(f"PASSED: {name}: strict dcp.load + set_state_dict into Python's "
              "Adam gives Python's 3-step state (hyper-parameters equal, "
              "tensors within 1e-5), and the 4th step agrees")

msd, osd = ref_state
dcp.save({"model": msd, "optim": osd}, checkpoint_id=path("py_default"))
host(tool, "resume", path("py_default"), path("py_default_resumed"))
print("PASSED: dcpp resumes from 2.6's Adam state with Python's defaults")
osd["param_groups"][0]["fused"] = True
dcp.save({"model": msd, "optim": osd}, checkpoint_id=path("py_fused"))
rc, out = host(tool, "resume", path("py_fused"), path("py_fused_resumed"),
               expect_ok=False)
if check(rc != 0 and "optim.param_groups.0.fused" in out,
         f"dcpp resumed from fused=True (exit {rc}) or did not name the key"):
    print("PASSED: dcpp refuses fused=True, naming optim.param_groups.0.fused")

if failures:
    print(f"FAILED: {len(failures)} mismatches")
    sys.exit(1)
print("OK: PyTorch 2.6 reads dcpp's structure: list positions, planner_data, "
      "param_groups")
