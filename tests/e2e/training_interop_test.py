#!/usr/bin/env python3
"""A C++ module + Adam (storage/training_state.hpp) against PyTorch 1.13.

    training_interop_test.py BUILD_APPS_DIR TOOL SCRATCH

The state is laid out as PyTorch 2.x's `get_state_dict(model, optim)` lays
it out (1.13 lacks it, so it is built here by hand) and flattened as DCP
2.4+'s `flatten_state_dict` flattens it:

    model.<fqn>, optim.state.<fqn>.{step,exp_avg,exp_avg_sq},
    optim.param_groups.0.{lr,betas,eps,weight_decay,amsgrad,params,...}

1. dcpp -> torch: `training_interop_tool save` trains 3 Adam steps in C++
   and saves; DCP 1.13 `load_state_dict(no_dist=True)` loads it into
   `model.state_dict()` + the FQN-keyed Adam layout; the values must equal
   3 steps of the same training in Python, `step` must be a float32 0-d
   tensor, the hyper-parameters and `params` (fqns) as set.
2. torch -> dcpp: Python saves its state after 3 steps with DCP 1.13
   `save_state_dict`; `training_interop_tool resume` loads it into a fresh
   C++ model and Adam, trains one step and saves; that must equal one more
   step in Python.

Both comparisons are bit for bit (libtorch and torch share the kernels and
the Adam arithmetic); the script prints how far apart the values are if
they are not. Exit 0 on success, 1 on failure, 77 (printing why) when
torch 1.13 DCP cannot be imported.
"""
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
INTEROP = os.path.join(HERE, "..", "..", "scripts", "interop")
SKIP = 77

apps, tool, scratch = sys.argv[1], sys.argv[2], sys.argv[3]

try:
    sys.path.insert(0, INTEROP)
    import torch113_compat as compat  # noqa: E402
    import torch  # noqa: E402
    from training_model import make_adam, make_model, train_step  # noqa: E402
except Exception as e:  # noqa: BLE001
    print(f"SKIP: torch 1.13 DCP cannot be imported by {sys.executable}: {e!r}")
    sys.exit(SKIP)

dcp = compat.dcp
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("MISMATCH: " + what)


def same(a, b, what):
    """Bit-identical tensors, or a note of how far apart they are."""
    if a.dtype != b.dtype or a.shape != b.shape:
        check(False, f"{what}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
        return
    if not torch.equal(a, b):
        check(False, f"{what}: max |diff| {(a - b).abs().max().item():g}")


def run(*cmd):
    print("$", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    sys.stdout.write(p.stdout)
    sys.stdout.write(p.stderr)
    if p.returncode != 0:
        print(f"FAILED: exit code {p.returncode}")
        sys.exit(1)


# -- get_state_dict's layout, by hand, flattened as DCP 2.4+ does --

GROUP_KEYS = ["lr", "betas", "eps", "weight_decay", "amsgrad"]


def get_state_dict(model, opt):
    """{"model": ..., "optim": {"state": {fqn: ...}, "param_groups": [...]}}"""
    fqn = {id(p): name for name, p in model.named_parameters()}
    sd = opt.state_dict()
    params = [p for g in opt.param_groups for p in g["params"]]
    state = {fqn[id(params[i])]: dict(s) for i, s in sd["state"].items()}
    groups = []
    for g, pg in zip(sd["param_groups"], opt.param_groups):
        g = dict(g)
        g["params"] = [fqn[id(p)] for p in pg["params"]]
        groups.append(g)
    return {"model": model.state_dict(),
            "optim": {"state": state, "param_groups": groups}}


def flatten(sd):
    flat = {}

    def visit(path, v):
        if isinstance(v, dict):
            for k, x in v.items():
                visit(path + (str(k),), x)
        elif isinstance(v, list) and any(isinstance(x, (dict, list, torch.Tensor)) for x in v):
            for i, x in enumerate(v):
                visit(path + (str(i),), x)
        else:
            flat[".".join(path)] = v

    visit((), sd)
    return flat


def set_state_dict(model, opt, flat):
    """`set_state_dict` by hand: the FQN layout into a 1.13 model + Adam."""
    model.load_state_dict({k[len("model."):]: v for k, v in flat.items()
                           if k.startswith("model.")})
    names = [n for n, _ in model.named_parameters()]
    state = {}
    for i, n in enumerate(names):
        prefix = f"optim.state.{n}."
        s = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
        if s:
            state[i] = s
    group = dict(opt.state_dict()["param_groups"][0])
    for k in GROUP_KEYS:
        group[k] = flat[f"optim.param_groups.0.{k}"]
    check(flat["optim.param_groups.0.params"] == names,
          f"params {flat['optim.param_groups.0.params']} != {names}")
    group["params"] = list(range(len(names)))
    opt.load_state_dict({"state": state, "param_groups": [group]})


def load_target(model):
    """A flattened target for DCP 1.13: tensors to fill, bytes placeholders."""
    target = {}
    for k, v in model.state_dict().items():
        target["model." + k] = torch.empty_like(v)
    for n, p in model.named_parameters():
        target[f"optim.state.{n}.step"] = torch.tensor(-1.0)
        target[f"optim.state.{n}.exp_avg"] = torch.empty_like(p)
        target[f"optim.state.{n}.exp_avg_sq"] = torch.empty_like(p)
    for k in GROUP_KEYS + ["params"]:
        target[f"optim.param_groups.0.{k}"] = None
    return target


def compare_flat(got, want, what):
    counts = [0, 0]
    for k, v in want.items():
        if not isinstance(v, torch.Tensor) and k.split(".")[-1] not in GROUP_KEYS + ["params"]:
            continue  # a hyper-parameter libtorch's Adam lacks (maximize, ...)
        if k not in got:
            check(False, f"{what}: {k} missing")
        elif isinstance(v, torch.Tensor):
            same(got[k], v, f"{what}: {k}")
            counts[0] += 1
        else:
            check(got[k] == v, f"{what}: {k} = {got[k]!r}, expected {v!r}")
            counts[1] += 1
    print(f"{what}: compared {counts[0]} tensors, {counts[1]} hyper-parameters")
    check(counts[0] == 4 + 4 * 3 and counts[1] == len(GROUP_KEYS) + 1,
          f"{what}: compared too few values")


if os.path.isdir(scratch):
    shutil.rmtree(scratch)
os.makedirs(scratch)
d1, d2, d3 = (os.path.join(scratch, n) for n in ("cpp3", "torch3", "cpp4"))

# Python's reference: 3 steps, then a fourth.
ref = make_model()
ref_opt = make_adam(ref)
for _ in range(3):
    train_step(ref, ref_opt)
ref3 = flatten(get_state_dict(ref, ref_opt))
ref3 = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in ref3.items()}

# 1. dcpp -> torch.
run(tool, "save", d1, "3")
got = load_target(ref)
dcp.load_state_dict(got, compat.RemappingReader(d1), no_dist=True)
step = got["optim.state.0.weight.step"]
print(f"step as saved by dcpp: {step.dtype}, shape {list(step.shape)}, {step.item()}")
check(step.dtype == torch.float32 and step.dim() == 0 and step.item() == 3.0,
      f"step {step!r}")
check(got["optim.param_groups.0.betas"] == (0.9, 0.99), "betas")
compare_flat(got, ref3, "dcpp's 3 steps vs torch's")

# The dcpp checkpoint also restores a PyTorch model + Adam that trains on.
py = make_model()
py_opt = make_adam(py, lr=0.5)
set_state_dict(py, py_opt, got)
check(py_opt.param_groups[0]["lr"] == 0.01, "lr after set_state_dict")

# 2. torch -> dcpp: Python saves its own 3-step state; C++ resumes.
dcp.save_state_dict(ref3, dcp.FileSystemWriter(d2), no_dist=True)
run(tool, "resume", d2, d3)
train_step(ref, ref_opt)
ref4 = flatten(get_state_dict(ref, ref_opt))
got4 = load_target(ref)
dcp.load_state_dict(got4, compat.RemappingReader(d3), no_dist=True)
compare_flat(got4, ref4, "one step in C++ after torch's checkpoint vs in torch")

# And one step in Python after dcpp's checkpoint equals it too.
train_step(py, py_opt)
compare_flat(flatten(get_state_dict(py, py_opt)), ref4,
             "one step in torch after dcpp's checkpoint vs in torch")

if failures:
    print(f"FAILED: {len(failures)} mismatches")
    sys.exit(1)
print("OK: dcpp <-> torch 1.13 training state, bit-identical")
