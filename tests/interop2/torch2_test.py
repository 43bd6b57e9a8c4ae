#!/usr/bin/env python3
"""dcpp against PyTorch 2.6, run by 2.6's python inside its chroot
(scripts/torch2/run.sh); dcpp's programs run on the host through
/opt/dcpp/host-exec.

    torch2_test.py CASE SCRATCH APPS_DIR TOOLS...

APPS_DIR holds dcpp, dcpp-launch, dcpp_train_example; TOOLS are
training_interop_tool, reshard_tool and safetensors_tool (absolute paths).
One python process runs every check of its case (torch's import is slow),
and every check runs even when an earlier one failed; the case fails
listing each failed check.

Cases:
  training       nn.Sequential + Adam (training_interop_tool): dcpp's
                 checkpoint loaded by dcp.load into get_state_dict's layout
                 without allow_partial_load and restored by set_state_dict;
                 one more Adam step in Python equals one more in C++, both
                 directions; dcp_to_torch_save and `dcpp export` of it read
                 with torch.load(weights_only=True).
  train_example  apps/train_example.cpp on 2 rank processes, async and sync
                 saves: loaded by 2.6 at worlds 1 (plain, set_state_dict
                 strict) and 2, 3 (DTensors) equal to the ranks' --dump;
                 dcp_to_torch_save of the async and the sync checkpoint
                 equal to each other, and to `dcpp export`.
  module_to_dcpp 2.6 saves a Module + Adam via get_state_dict and nested
                 plain values; dcpp rank processes (reshard_tool under
                 dcpp-launch) load it on 1, 2 and 3 ranks in their own
                 uneven sharding and save what they loaded; 2.6 loads that
                 strictly and compares with what it saved.
  import         2.6 torch.save files (a flat model state_dict, a nested
                 training checkpoint, views, the dtypes libtorch 1.13 has,
                 an OrderedDict) through
                 `dcpp import`: loaded by 2.6 dcp.load at worlds 1-3,
                 `dcpp export` and dcp_to_torch_save give back the input
                 with torch.load(weights_only=True).
  dtypes2        uint16/32/64 and float8 (2.x's _rebuild_tensor_v3) through
                 import, `dcpp verify`, export and dcp_to_torch_save.
  size_dtype     torch.Size and torch.dtype values through import, export
                 and dcp_to_torch_save.
  safetensors    safetensors.torch.save_file files loaded by dcpp on 1-3
                 ranks and imported; dcpp's .safetensors (multi-rank saves,
                 sharded, export) read by safetensors.torch.load_file.
Exit 0 on success, 1 on failure.
"""
import datetime
import faulthandler
import glob
import os
import shutil
import subprocess
import sys
import traceback
import warnings
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts", "interop"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner  # noqa: E402
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save  # noqa: E402
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.tensor import DTensor, Replicate, Shard  # noqa: E402
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset  # noqa: E402

from peer import free_port  # noqa: E402
from state_trees import (dcp_flatten, first_difference, is_terminal, normalize, plain,  # noqa: E402
                         same)
from training_model import make_adam, make_model, train_step  # noqa: E402

# DCP 2.6's own use of tensor.storage() warns on every save.
warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
mp.set_forkserver_preload(["torch", "torch.distributed.checkpoint"])
# One thread: identical arithmetic to libtorch's, and no OpenMP pool that
# forked ranks would inherit.
torch.set_num_threads(1)

case, scratch, apps = sys.argv[1], sys.argv[2], sys.argv[3]
tools = {os.path.basename(t): t for t in sys.argv[4:]}
failures = []


def check(cond, what):
    print(("ok: " if cond else "MISMATCH: ") + what, flush=True)
    if not cond:
        failures.append(what)
    return cond


def attempt(what, fn, *args, **kw):
    """Runs one check; an exception fails it (named) and the case goes on."""
    try:
        return fn(*args, **kw)
    except BaseException as e:  # noqa: BLE001 (DCP's CheckpointException is one)
        text = str(e).strip().splitlines()
        check(False, f"{what}: {type(e).__name__}: {' | '.join(text[-3:])[:600]}")
        traceback.print_exc()
        return None


def host(*cmd, ok=True, timeout=180):
    """Runs a dcpp program on the host, in the scratch folder."""
    cmd = [str(c) for c in cmd]
    print("$", " ".join(cmd), flush=True)
    p = subprocess.run(["/opt/dcpp/host-exec"] + cmd, cwd=scratch, capture_output=True,
                       text=True, timeout=timeout)
    sys.stdout.write(p.stdout[-3000:] + p.stderr[-3000:])
    if ok and p.returncode != 0:
        raise RuntimeError(f"{os.path.basename(cmd[0])} exited with {p.returncode}: "
                           f"{p.stderr.strip()[-500:]}")
    return p


def dcpp(*args, **kw):
    return host(os.path.join(apps, "dcpp"), *args, **kw)


def launch(n, *cmd):
    return host(os.path.join(apps, "dcpp-launch"), "--nproc", n, "--", *cmd)


def path(*parts):
    return os.path.join(scratch, *parts)


def load_pt(file):
    """What every file meant for PyTorch 2.x must pass: its default load,
    weights_only=True. When that refuses the file (a failed check), the
    file is loaded without it, so that its contents are still checked."""
    try:
        return torch.load(file, weights_only=True)
    except Exception as e:  # noqa: BLE001
        lines = [x for x in str(e).splitlines() if "WeightsUnpickler" in x] or [str(e)[-300:]]
        check(False, f"torch.load({os.path.basename(file)}, weights_only=True): "
              f"{lines[0].strip()[:300]}")
        return torch.load(file, weights_only=False)


def to_torch_save(ckpt, name):
    out = path(name)
    dcp_to_torch_save(ckpt, out)
    return load_pt(out)


def export(ckpt, name, *flags):
    out = path(name)
    dcpp("export", *flags, ckpt, out)
    return load_pt(out)


def same_as(got, want, what):
    diff = first_difference(got, want)
    check(diff is None, f"{what}" + (f": differs at {diff}"[:700] if diff else ""))


def strict_load(target, ckpt, what):
    """dcp.load without allow_partial_load; when that fails (a failed check),
    again with it, so that the checks after it still run."""
    try:
        dcp.load(target, checkpoint_id=ckpt)
        check(True, f"{what}: dcp.load without allow_partial_load")
    except BaseException as e:  # noqa: BLE001
        check(False, f"{what}: dcp.load without allow_partial_load: "
              f"{type(e).__name__}: {' | '.join(str(e).strip().splitlines()[-2:])[:600]}")
        dcp.load(target, checkpoint_id=ckpt,
                 planner=DefaultLoadPlanner(allow_partial_load=True))


def as_dcp(value):
    """`value` as dcp_to_torch_save rebuilds it from DCP's flattening: dict
    keys as str, traversed lists as lists, containers without leaves gone."""
    if isinstance(value, dict) or (isinstance(value, list) and not is_terminal(value)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        out = {str(k): as_dcp(v) for k, v in items}
        out = {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}
        return out if isinstance(value, dict) else list(out.values())
    return value


def clone_tree(value):
    if isinstance(value, dict):
        return {k: clone_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone_tree(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return value


def zeros_tree(value):
    """A load target shaped like `value`: zero tensors, None for the rest."""
    if isinstance(value, dict):
        return {k: zeros_tree(v) for k, v in value.items()}
    if isinstance(value, list) and any(isinstance(v, (dict, list, torch.Tensor)) for v in value):
        return [zeros_tree(v) for v in value]
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value)
    return None


# -- loading at several worlds, as DTensors ------------------------------------


def _rank_load(rank, world, port, ckpt, want, split, results):
    # A rank stuck anywhere shows where, and ends.
    faulthandler.dump_traceback_later(120, exit=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A rank that fails must not leave the others waiting for ever.
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    bad = []
    try:
        mesh = init_device_mesh("cpu", (world,))
        target, slices = {}, {}
        for key, v in want.items():
            if not isinstance(v, torch.Tensor):
                target[key] = None
                continue
            if v.dim() == 0:
                target[key] = torch.zeros_like(v)
                continue
            d = 0 if split == "first" else v.dim() - 1
            placement = [Shard(d)] if v.shape[d] >= world else [Replicate()]
            size, off = compute_local_shape_and_global_offset(v.shape, mesh, placement)
            target[key] = DTensor.from_local(torch.zeros(size, dtype=v.dtype), mesh,
                                             placement, run_check=False, shape=v.shape,
                                             stride=torch.empty(v.shape, device="meta").stride())
            slices[key] = tuple(slice(o, o + n) for o, n in zip(off, size))
        dcp.load(target, checkpoint_id=ckpt)
        for key, v in want.items():
            got = target[key]
            if isinstance(got, DTensor):
                # This rank's block only (gloo cannot gather every dtype).
                got, v = got.to_local(), v[slices[key]]
            if not same(got, v):
                bad.append(key)
    except BaseException:  # noqa: BLE001
        bad.append(traceback.format_exc()[-1500:])
    results[rank] = bad
    # 2.6's gloo can hang a rank in destroy_process_group even after a
    # barrier; the result is recorded, so the rank ends without it.
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def load_at_worlds(ckpt, want, worlds, what, split="first"):
    """Loads the flat keys of `want` from `ckpt` on each world: plain
    tensors on 1 rank (no process group), DTensors beyond (Shard of the
    first or the last dim, `split`, where it has enough elements, else
    Replicate); every value must equal `want`. The ranks are forked from a
    fork server that imported torch: forking this process, whose DCP calls
    leave threads behind, can deadlock a rank."""
    for world in worlds:
        if world == 1:
            target = {k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else None
                      for k, v in want.items()}
            try:
                dcp.load(target, checkpoint_id=ckpt)
                bad = [k for k, v in want.items() if not same(target[k], v)]
            except BaseException:  # noqa: BLE001
                bad = [traceback.format_exc()[-1500:]]
        else:
            with mp.Manager() as manager:
                results = manager.dict()
                mp.start_processes(_rank_load, nprocs=world, join=True,
                                   start_method="forkserver",
                                   args=(world, free_port(), ckpt, want, split, results))
                bad = sorted({b for r in range(world) for b in results.get(r, ["no result"])})
        check(not bad, f"{what}: dcp.load on {world} rank(s) "
              f"({'plain tensors' if world == 1 else 'DTensors'}), {len(want)} keys"
              + (f": differ: {bad[:3]}" if bad else ""))


# -- training: nn.Sequential + Adam --------------------------------------------


def flat_of(model, opt):
    msd, osd = get_state_dict(model, opt)
    return dcp_flatten(clone_tree({"model": msd, "optim": osd}))[0]


def compare_training(got, want, what):
    """Tensors within a few ulps (libtorch 1.13's Adam and 2.6's round
    differently: 2.6 updates exp_avg with lerp_; about 6e-8 apart after 3
    steps), the rest exactly; prints the largest difference."""
    bad, worst, tensors = [], 0.0, 0
    for k, w in want.items():
        g = got.get(k)
        if isinstance(w, torch.Tensor):
            tensors += 1
            if (not isinstance(g, torch.Tensor) or g.dtype != w.dtype or g.shape != w.shape
                    or not torch.allclose(g, w, rtol=1e-5, atol=1e-6)):
                bad.append(k)
            else:
                worst = max(worst, (g.double() - w.double()).abs().max().item() if w.numel() else 0)
        elif not same(g, w):
            bad.append(k)
    check(not bad, f"{what}: {tensors} tensors (largest difference {worst:g}) and "
          f"{len(want) - tensors} other values" + ("; differ: " + ", ".join(
              f"{k}: {got.get(k)!r} vs {want[k]!r}"[:200] for k in bad[:4]) if bad else ""))


def skeleton(value):
    """`value` with each tensor as its dtype and shape: the structure, and
    every non-tensor value, to compare exactly."""
    if isinstance(value, dict):
        return {k: skeleton(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(skeleton(v) for v in value)
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), tuple(value.shape))
    return value


def compare_nested(got, want, what):
    """Same nesting, keys and non-tensor values; tensors as compare_training."""
    same_as(skeleton(got), skeleton(want), f"{what}: structure and non-tensor values")
    compare_training(dcp_flatten(got)[0], dcp_flatten(want)[0], f"{what}: values")


def load_training(ckpt, model, opt, what):
    """dcp.load of `ckpt` into get_state_dict's layout, strictly, then
    set_state_dict."""
    msd, osd = get_state_dict(model, opt)
    sd = {"model": msd, "optim": osd}
    strict_load(sd, ckpt, what)
    attempt(f"{what}: set_state_dict", set_state_dict, model, opt,
            model_state_dict=sd["model"], optim_state_dict=sd["optim"])


def case_training():
    tool = tools["training_interop_tool"]
    cpp3, torch3, cpp4_from_cpp, cpp4_from_torch = (
        path(n) for n in ("cpp3", "torch3", "cpp4_from_cpp", "cpp4_from_torch"))
    ref = make_model()
    ref_opt = make_adam(ref)
    for _ in range(3):
        train_step(ref, ref_opt)
    ref3 = flat_of(ref, ref_opt)
    nested3 = plain(clone_tree(dict(zip(("model", "optim"), get_state_dict(ref, ref_opt)))))

    # dcpp -> torch: 3 steps in C++, loaded strictly into 2.6's model + Adam.
    host(tool, "save", cpp3, 3)
    py = make_model()
    py_opt = make_adam(py, lr=0.5)
    load_training(cpp3, py, py_opt, "dcpp's 3 steps into 2.6")
    compare_training(flat_of(py, py_opt), ref3, "dcpp's 3 steps after set_state_dict vs 2.6's")
    check(py_opt.param_groups[0]["lr"] == 0.01, "lr restored by set_state_dict")

    # One more step on each side from dcpp's checkpoint.
    train_step(ref, ref_opt)
    ref4 = flat_of(ref, ref_opt)
    train_step(py, py_opt)
    compare_training(flat_of(py, py_opt), ref4,
                     "one more step in 2.6 after dcpp's checkpoint vs in 2.6 throughout")
    host(tool, "resume", cpp3, cpp4_from_cpp)
    m4 = make_model()
    o4 = make_adam(m4, lr=0.5)
    load_training(cpp4_from_cpp, m4, o4, "C++'s 4th step into 2.6")
    compare_training(flat_of(m4, o4), flat_of(py, py_opt),
                     "from dcpp's checkpoint, one more step in C++ vs one more in 2.6")

    # torch -> dcpp: 2.6 saves its 3 steps with get_state_dict; C++ resumes.
    dcp.save({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in ref3.items()},
             checkpoint_id=torch3)
    attempt("C++ resumes from 2.6's checkpoint", host, tool, "resume", torch3, cpp4_from_torch)
    if os.path.exists(os.path.join(cpp4_from_torch, ".metadata")):
        m5 = make_model()
        o5 = make_adam(m5, lr=0.5)
        load_training(cpp4_from_torch, m5, o5, "C++'s step after 2.6's checkpoint")
        compare_training(flat_of(m5, o5), ref4,
                         "one more step in C++ after 2.6's checkpoint vs in 2.6")

    # PyTorch's own conversion, and dcpp's: both must be the nested
    # get_state_dict of the 3 steps, read with weights_only=True.
    for what, fn, args in (("dcp_to_torch_save", to_torch_save, (cpp3, "training.pt")),
                           ("dcpp export", export, (cpp3, "training_export.pt"))):
        got = attempt(f"{what} of dcpp's training state", fn, *args)
        if got is not None:
            compare_nested(got, as_dcp(nested3), f"{what} of dcpp's training state + "
                           "torch.load(weights_only) vs get_state_dict in 2.6")


# -- apps/train_example.cpp ----------------------------------------------------


class Net(nn.Module):
    """train_example.cpp's net: the embedding table whole, and the MLP."""

    def __init__(self, rows=16, dim=8, hidden=16):
        super().__init__()
        self.emb = nn.Parameter(torch.zeros(rows, dim))
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, 1)


DUMP_DTYPES = {"Float": torch.float32, "Double": torch.float64, "Long": torch.int64,
               "Int": torch.int32}


def read_dump(file):
    """train_example --dump: key, then 'Dtype [sizes]' and the raw bytes, or
    'bytes N' and the bytes; each entry ends with a newline."""
    out = {}
    with open(file, "rb") as f:
        while True:
            key = f.readline()
            if not key:
                return out
            head = f.readline().decode().strip()
            if head.startswith("bytes "):
                f.read(int(head.split()[1]))
            else:
                name, sizes = head.split(" ", 1)
                shape = [int(x) for x in sizes.strip("[]").split(",") if x.strip()]
                dtype = DUMP_DTYPES[name]
                n = int(torch.tensor(shape, dtype=torch.int64).prod().item()) if shape else 1
                data = bytearray(f.read(n * torch.empty((), dtype=dtype).element_size()))
                out[key.decode().strip()] = torch.frombuffer(data, dtype=dtype).reshape(shape)
            f.read(1)


def case_train_example():
    exe = os.path.join(apps, "dcpp_train_example")
    roots = {}
    for mode in ("async", "sync"):
        root = path(mode)
        flags = ["--sync"] if mode == "sync" else []
        launch(2, exe, "--root", root, "--steps", 10, "--save-every", 5,
               "--dump", path(f"{mode}_dump{{rank}}"), *flags)
        roots[mode] = os.path.join(root, "step_000000010")
        check(os.path.exists(os.path.join(roots[mode], ".metadata")),
              f"the {mode} run's step 10 is committed")
    dumps = [read_dump(path(f"sync_dump{r}")) for r in (0, 1)]
    # The whole state: the ranks' rows of the table (and of its Adam state)
    # one after the other, the rest as every rank has it.
    want = {}
    for key, v in dumps[0].items():
        if key == "model.emb" or key.startswith("optim.state.emb."):
            v = torch.cat([dumps[0][key], dumps[1][key]]) if v.dim() else v
        want["app." + key] = v
    for mode, ckpt in roots.items():
        load_at_worlds(ckpt, want, (1, 2, 3), f"train_example ({mode} saves)")

    # Strictly into a 2.6 Net + Adam, as a PyTorch program resumes.
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=0.5)
    msd, osd = get_state_dict(net, opt)
    sd = {"app": {"model": msd, "optim": osd}}
    strict_load(sd, roots["async"], "train_example into a 2.6 Net + Adam")
    attempt("train_example: set_state_dict", set_state_dict, net, opt,
            model_state_dict=sd["app"]["model"], optim_state_dict=sd["app"]["optim"])
    check(torch.equal(net.emb.detach(), want["app.model.emb"]), "the table after set_state_dict")
    check(opt.param_groups[0]["lr"] == 1e-2, "lr after set_state_dict")

    conv = {mode: attempt(f"dcp_to_torch_save of the {mode} checkpoint", to_torch_save, ckpt,
                          f"train_{mode}.pt") for mode, ckpt in roots.items()}
    if conv["async"] is not None and conv["sync"] is not None:
        same_as(conv["async"], conv["sync"],
                "dcp_to_torch_save: the async checkpoint vs the sync one")
    if conv["sync"] is not None:
        groups = conv["sync"].get("app", {}).get("optim", {}).get("param_groups")
        check(isinstance(groups, list),
              f"dcp_to_torch_save: param_groups is a list: {type(groups).__name__}")
        ex = attempt("dcpp export of the async checkpoint", export, roots["async"],
                     "train_export.pt")
        if ex is not None:
            same_as(ex, conv["sync"], "dcpp export vs dcp_to_torch_save")


# -- a Module + Adam and nested values from 2.6, loaded by dcpp ranks ---------


def case_module_to_dcpp():
    model = make_model()
    opt = make_adam(model)
    for _ in range(2):
        train_step(model, opt)
    msd, osd = get_state_dict(model, opt)
    g = torch.Generator().manual_seed(3)
    saved = clone_tree({
        "model": msd, "optim": osd,
        "extra": {"steps": 2, "name": "run-7", "lr_trace": [0.1, 0.05],
                  "blocks": [torch.randn(5, 3, generator=g),
                             {"w": torch.randn(7, generator=g).to(torch.bfloat16)}],
                  "ids": torch.arange(11, dtype=torch.int64) * 3,
                  "mask": torch.rand(3, 5, generator=g) > 0.5}})
    src = path("torch")
    dcp.save(saved, checkpoint_id=src)
    want = normalize(plain(saved))
    for world, dim in ((1, 0), (2, 1), (3, 0)):
        out = path(f"dcpp_w{world}")
        r = attempt(f"dcpp loads on {world} ranks", launch, world, tools["reshard_tool"],
                    src, out, "--dim", dim)
        if r is None:
            continue
        target = zeros_tree(saved)
        strict_load(target, out, f"dcpp's load on {world} ranks, saved again")
        same_as(normalize(plain(target)), want,
                f"2.6's Module + Adam + nested values, loaded by dcpp on {world} ranks "
                f"(split on dim {dim})")
        m2 = make_model()
        o2 = make_adam(m2, lr=0.5)
        attempt(f"set_state_dict from dcpp's save on {world} ranks", set_state_dict, m2, o2,
                model_state_dict=target["model"], optim_state_dict=target["optim"])
        compare_training(flat_of(m2, o2), flat_of(model, opt),
                         f"Module + Adam restored from dcpp's save on {world} ranks")


# -- torch.save files of 2.6 through dcpp import / export ---------------------


def round_trip(name, obj, worlds=(1, 2, 3), verify=False):
    """torch.save (2.6) -> dcpp import -> dcp.load at `worlds`, dcpp export
    and dcp_to_torch_save, each compared with the input."""
    src, ckpt = path(name + ".pt"), path(name)
    torch.save(obj, src)
    if attempt(f"{name}: dcpp import", dcpp, "import", src, ckpt) is None:
        return
    flat, _ = dcp_flatten(obj)
    if verify:
        attempt(f"{name}: dcpp verify", dcpp, "verify", ckpt)
        attempt(f"{name}: dcpp inspect", dcpp, "inspect", ckpt)
    if worlds:
        load_at_worlds(ckpt, flat, worlds, f"{name}: dcpp import",
                       split="last")
    got = attempt(f"{name}: dcpp export", export, ckpt, name + "_export.pt")
    if got is not None:
        same_as(got, plain(obj), f"{name}: dcpp export + torch.load(weights_only) vs the input")
    got = attempt(f"{name}: dcpp export --flat", export, ckpt, name + "_flat.pt", "--flat")
    if got is not None:
        same_as(got, plain(flat), f"{name}: dcpp export --flat vs the flattened input")
    got = attempt(f"{name}: dcp_to_torch_save", to_torch_save, ckpt, name + "_dcp.pt")
    if got is not None:
        same_as(got, as_dcp(plain(obj)), f"{name}: dcp_to_torch_save + "
                "torch.load(weights_only) vs the input")


def torch_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def case_import():
    m = torch_model()
    round_trip("flat_state_dict", m.state_dict())
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randn(5, 4)).sum().backward()
    opt.step()
    round_trip("training_checkpoint", {"model": m.state_dict(), "optim": opt.state_dict(),
                                       "epoch": 3, "note": "2.6"})
    base = torch.arange(30.0).reshape(5, 6)
    round_trip("views", {"base": base, "row": base[1], "col": base[:, 2], "t": base.t(),
                         "strided": base[::2, ::3], "scalar": base[2, 3],
                         "nested": {"again": base[3], "list": [base[0], 7, "x"]}})
    x = torch.arange(-3, 5)
    round_trip("dtypes", {"float64": x.double() / 3, "float32": x.float() / 3,
                          "float16": x.half() / 4, "bfloat16": x.bfloat16() / 4,
                          "int8": x.to(torch.int8), "int16": x.to(torch.int16) * 300,
                          "int32": x.int() * 70000, "int64": x.long() << 40,
                          "uint8": (x + 3).to(torch.uint8) * 30, "bool": x > 0,
                          "complex64": torch.complex(x.float(), -x.float()),
                          "complex128": torch.complex(x.double(), x.double() / 7)})
    round_trip("ordered_dict", OrderedDict([("z", torch.ones(3)), ("a", {"b": torch.zeros(2, 2)}),
                                            ("m", torch.arange(4, dtype=torch.int16))]))


def case_dtypes2():
    x = torch.arange(0, 8)
    # 2.6 computes little in the new unsigned types: their bits are made
    # as signed ints and viewed, beyond the signed range.
    big = [0, 1, 40000, 65535, 2**31 + 5, 2**32 - 1, 2**61, 2**64 - 1]
    unsigned = {16: torch.int16, 32: torch.int32, 64: torch.int64}
    values = {f"uint{n}": torch.tensor([b % 2**n - (2**n if b % 2**n >= 2**(n - 1) else 0)
                                        for b in big], dtype=t).view(getattr(torch, f"uint{n}"))
              for n, t in unsigned.items()}
    values.update({"float8_e4m3fn": (x.float() / 3).to(torch.float8_e4m3fn),
                   "float8_e5m2": (x.float() * 7).to(torch.float8_e5m2),
                   "float32": x.float()})
    # 2.6's own DCP checkpoint of them: dcpp reads it as bytes with a dtype.
    ckpt = path("dcp_dtypes")
    dcp.save(values, checkpoint_id=ckpt)
    shown = attempt("dcpp inspect of 2.6's checkpoint of 2.x dtypes", dcpp, "inspect", ckpt)
    if shown is not None:
        missing = [n for n in values if n not in shown.stdout]
        check(not missing, f"dcpp inspect names every dtype: missing {missing}")
    attempt("dcpp verify of 2.6's checkpoint of 2.x dtypes", dcpp, "verify", ckpt)
    got = attempt("dcpp export of 2.6's checkpoint of 2.x dtypes", export, ckpt, "dcp_dtypes.pt")
    if got is not None:
        same_as(got, values, "2.6 dcp.save -> dcpp export -> torch.load: 2.x dtypes kept")
    # One file per 2.x dtype, so each is accepted or refused on its own.
    for name, t in values.items():
        if name != "float32":
            round_trip(f"dtype_{name}", {name: t, "float32": values["float32"]},
                       worlds=(1,), verify=True)


def case_size_dtype():
    round_trip("size_dtype", {"w": torch.ones(2, 3), "shape": torch.Size([2, 3]),
                              "dtype": torch.bfloat16,
                              "nested": {"empty": torch.Size([]), "int8": torch.int8}},
               worlds=(1,))


# -- safetensors (the package, 0.4.5 in trixie) ------------------------------


def st_values():
    """safetensors_tool's tensors (tests/e2e/safetensors_tool.cpp)."""
    return {"row": torch.arange(24, dtype=torch.float32).reshape(6, 4) * 1.5,
            "col": torch.arange(30, dtype=torch.float64).reshape(5, 6) - 7,
            "i": torch.arange(7, dtype=torch.int64) * 1000003,
            "h": (torch.arange(9, dtype=torch.float32).reshape(3, 3) / 4).to(torch.bfloat16),
            "b": torch.arange(5) % 2 == 0,
            "u": (torch.arange(8, dtype=torch.int32).reshape(4, 2) * 30).to(torch.uint8)}


def same_tensors(got, want, what):
    bad = sorted(set(got) ^ set(want)) + [k for k in want if k in got and not same(got[k], want[k])]
    check(not bad, f"{what}: {len(want)} tensors" + (f"; differ or missing: {bad}" if bad else ""))


def case_safetensors():
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    tool = tools["safetensors_tool"]
    want = st_values()
    src = path("py", "model.safetensors")
    os.makedirs(os.path.dirname(src))
    save_file(want, src, metadata={"format": "pt", "source": "torch 2.6"})
    for world in (1, 2, 3):
        attempt(f"dcpp loads safetensors' file on {world} ranks", host, tool, "load", src, world)
    ckpt = path("imported")
    if attempt("dcpp import of safetensors' file", dcpp, "import", src, ckpt) is not None:
        load_at_worlds(ckpt, want, (1, 2), "dcpp import of safetensors' file")
        got = attempt("dcpp export to .pt", export, ckpt, "imported.pt")
        if got is not None:
            same_tensors(got, want, "safetensors -> dcpp import -> export .pt "
                         "(torch.load(weights_only); no __metadata__ key)")
        out = path("exported.safetensors")
        if attempt("dcpp export to .safetensors", dcpp, "export", ckpt, out) is not None:
            same_tensors(load_file(out), want, "dcpp export .safetensors -> load_file")
            with safe_open(out, "pt") as f:
                check((f.metadata() or {}).get("source") == "torch 2.6",
                      f"__metadata__ kept through import + export: {f.metadata()}")
    for world, shard in ((2, None), (3, 100)):
        d = path(f"dcpp_w{world}")
        args = [tool, "save", d, world] + ([shard] if shard else [])
        if attempt(f"safetensors_tool save on {world} ranks", host, *args) is None:
            continue
        got = {}
        for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
            got.update(load_file(f))
        same_tensors(got, want, f"dcpp's save on {world} ranks ({len(glob.glob(d + '/*.safetensors'))}"
                     " file(s)) read by load_file")


CASES = {"training": case_training, "train_example": case_train_example,
         "module_to_dcpp": case_module_to_dcpp, "import": case_import,
         "dtypes2": case_dtypes2, "size_dtype": case_size_dtype,
         "safetensors": case_safetensors}

if __name__ == "__main__":
    print(f"torch {torch.__version__} in {sys.prefix}; case {case}", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    attempt(case, CASES[case])
    if failures:
        print(f"FAILED: {case}: {len(failures)} check(s):")
        for f in failures:
            print("  - " + f)
        sys.exit(1)
    print(f"PASSED: {case}")
