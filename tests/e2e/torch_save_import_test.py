#!/usr/bin/env python3
"""`dcpp import` and `dcpp export` of torch.save files written by PyTorch
1.13 (Debian's).

    torch_save_import_test.py BUILD_APPS_DIR CASE

Good cases: torch.save writes the input, `dcpp import` converts it, and DCP
1.13's `load_state_dict(no_dist=True)` loads every flattened key; values
(dtype, shape, bits) must equal the input's, flattened as DCP 2.x's
flatten_state_dict flattens, and `planner_data` must record each key's
nested path as DCP records it (dict keys str, list positions int). Then
`dcpp export` must give back, through `torch.load`, the input itself:
same nesting (dicts, lists, tuples, scalars, None, tensors), keys and
values. The one normalisation: an OrderedDict comes back as a dict (DCP's
flattening does not record the container's class). `dcpp export --flat`
must give one dict of the flattened keys.

`optimizer_round_trip`: model and Adam state after import + export load
into a fresh model and optimizer (`Adam.load_state_dict(torch.load(out))`),
the optimizer state is really restored (its int keys are back), and one
more step gives the same parameters as the original's.

`old_str_positions`: a checkpoint whose planner_data spells list positions
as str (as dcpp recorded them before) still exports, and its optimizer
state still loads into Adam.

Hostile cases: crafted files (by hand, or by patching data.pkl) must end in
one error line naming what is wrong, exit code 1, and nothing written to the
target directory. The `os.system` case proves nothing ran: its command
would create a marker file.

Exit 0 on success, 1 on failure, 77 (printing why) when torch 1.13 DCP
cannot be imported.
"""
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
INTEROP = os.path.join(HERE, "..", "..", "scripts", "interop")
SKIP = 77

apps, case = sys.argv[1], sys.argv[2]
dcpp = os.path.join(apps, "dcpp")

try:
    sys.path.insert(0, INTEROP)
    import torch113_compat as compat  # noqa: E402
    import torch  # noqa: E402
    from state_trees import (dcp_flatten, first_difference, normalize, plain,  # noqa: E402
                             same, same_tree)
except Exception as e:  # noqa: BLE001
    print(f"SKIP: torch 1.13 DCP cannot be imported by {sys.executable}: {e!r}")
    sys.exit(SKIP)


def fail(msg):
    print("FAILED: " + msg)
    sys.exit(1)


def run_dcpp(*args):
    cmd = [dcpp, *args]
    print("$", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    sys.stdout.write(p.stdout + p.stderr)
    return p


def run_import(src, dst, flavor="2"):
    return run_dcpp("import", "--flavor", flavor, src, dst)


def check_good(obj, flavor):
    scratch = tempfile.mkdtemp(prefix="dcpp-import-")
    try:
        src = os.path.join(scratch, "in.pt")
        ckpt = os.path.join(scratch, "ckpt")
        torch.save(obj, src)
        p = run_import(src, ckpt, flavor)
        if p.returncode != 0:
            fail(f"dcpp import exited with {p.returncode}")
        flat, mapping = dcp_flatten(obj)
        sd = {k: torch.zeros(v.shape, dtype=v.dtype) if isinstance(v, torch.Tensor)
              else None for k, v in flat.items()}
        reader = compat.RemappingReader(ckpt)
        compat.dcp.load_state_dict(sd, reader, no_dist=True)
        bad = [k for k, v in flat.items() if not same(sd[k], v)]
        if bad:
            fail(f"{len(bad)} keys differ after the DCP load, e.g. {bad[0]}: "
                 f"{sd[bad[0]]!r} != {flat[bad[0]]!r}")
        md = reader.read_metadata()
        if set(md.state_dict_metadata) != set(flat):
            fail(f"checkpoint keys {sorted(md.state_dict_metadata)} != "
                 f"{sorted(flat)}")
        # The nesting: planner_data holds each nested key's path as DCP 2.x
        # records it (list positions as int, dict keys as str).
        planner = md.planner_data or {}
        for key, path in mapping.items():
            got = tuple(planner.get(key, (key,)))
            if got != path or [type(x) for x in got] != [type(x) for x in path]:
                fail(f"planner_data[{key!r}] is {got!r}, expected {path!r}")
        rebuilt = {}
        for key, value in sd.items():
            node = rebuilt
            path = planner.get(key, (key,))
            for part in path[:-1]:
                node = node.setdefault(str(part), {})
            node[str(path[-1])] = value
        if not same_tree(rebuilt, normalize(obj)):
            fail("the nesting rebuilt from planner_data differs from the input")
        print(f"PASSED: {case}: {len(flat)} keys load in DCP 1.13 "
              f"(flavor {flavor}) equal to the input, nesting rebuilt")
        check_export(obj, ckpt, scratch, flat)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def has_float(value):
    """Whether a Python float is anywhere in `value` (1.13's weights-only
    unpickler has no BINFLOAT opcode, so even torch.save's own files with
    one need weights_only=False there)."""
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(has_float(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_float(v) for v in value)
    return False


def run_export(ckpt, out, *flags):
    if run_dcpp("export", *flags, ckpt, out).returncode != 0:
        fail("dcpp export failed")
    got = torch.load(out)
    # Only globals the weights-only unpickler allows (no
    # torch.jit._pickle.restore_type_tag): it loads the same, or fails on
    # a float only.
    try:
        safe = torch.load(out, weights_only=True)
    except Exception as e:  # noqa: BLE001
        if has_float(got) and "Unsupported operand 71" in str(e):
            return got
        fail(f"torch.load(weights_only=True) of the export: {e!r}")
    diff = first_difference(safe, got)
    if diff:
        fail(f"torch.load(weights_only=True) differs at {diff}")
    return got


def check_export(obj, ckpt, scratch, flat):
    out = os.path.join(scratch, "out.pt")
    got = run_export(ckpt, out)
    diff = first_difference(got, plain(obj))
    if diff:
        fail(f"dcpp export differs from the input at {diff}")
    print(f"PASSED: {case}: dcpp export + torch.load gives back the input "
          "(OrderedDicts as dicts)")
    got = run_export(ckpt, os.path.join(scratch, "flat.pt"), "--flat")
    diff = first_difference(got, plain(flat))
    if diff:
        fail(f"dcpp export --flat differs from the flattened input at {diff}")
    print(f"PASSED: {case}: dcpp export --flat gives the {len(flat)} "
          "flattened keys")


# -- inputs ------------------------------------------------------------------


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                               torch.nn.ReLU(), torch.nn.Linear(8, 2))


def training_checkpoint():
    m = model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m(torch.randn(5, 4)).sum().backward()
    opt.step()
    return {"model": m.state_dict(), "optim": opt.state_dict(), "epoch": 3}


def views():
    base = torch.arange(20.0).reshape(4, 5)
    return {"base": base, "row": base[1], "col": base[:, 2], "t": base.t(),
            "narrow": base.narrow(1, 1, 3), "strided": base[::2, ::2],
            "scalar": base[2, 3], "nested": {"again": base[3], "list": [base[0], 7]},
            "alone": torch.arange(6, dtype=torch.int64).reshape(2, 3).t()}


def dtypes():
    x = torch.arange(-3, 5)
    return {"float64": x.double() / 3, "float32": x.float() / 3,
            "float16": x.half() / 4, "bfloat16": x.bfloat16() / 4,
            "int8": x.to(torch.int8), "int16": x.to(torch.int16) * 300,
            "int32": x.int() * 70000, "int64": x.long() << 40,
            "uint8": (x + 3).to(torch.uint8) * 30, "bool": x > 0,
            "complex64": torch.complex(x.float(), -x.float()),
            "complex128": torch.complex(x.double(), x.double() / 7)}


def optimizer_round_trip(flavor, old_str_positions=False):
    scratch = tempfile.mkdtemp(prefix="dcpp-export-optim-")
    try:
        src = os.path.join(scratch, "in.pt")
        ckpt = os.path.join(scratch, "ckpt")
        out = os.path.join(scratch, "out.pt")
        m = model()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(2):
            opt.zero_grad()
            m(torch.randn(5, 4)).sum().backward()
            opt.step()
        torch.save({"model": m.state_dict(), "optim": opt.state_dict()}, src)
        p = run_import(src, ckpt, flavor)
        if p.returncode != 0:
            fail(f"dcpp import exited with {p.returncode}")
        if old_str_positions:
            spell_positions_as_str(ckpt)
        got = run_export(ckpt, out)
        m2 = model()
        opt2 = torch.optim.Adam(m2.parameters(), lr=0.5)
        m2.load_state_dict(got["model"])
        opt2.load_state_dict(got["optim"])
        want_state = opt.state_dict()["state"]
        got_state = opt2.state_dict()["state"]
        if set(got_state) != set(want_state) or not want_state:
            fail(f"optimizer state after load_state_dict has ids "
                 f"{sorted(got_state)}, expected {sorted(want_state)}")
        for pid, entry in want_state.items():
            for name, value in entry.items():
                if not same(got_state[pid][name], value):
                    fail(f"state[{pid}][{name!r}] differs after the load")
        if opt2.param_groups[0]["lr"] != 1e-2:
            fail(f"lr is {opt2.param_groups[0]['lr']} after the load")
        # One more identical step on both: same parameters.
        x = torch.randn(5, 4)
        for mm, oo in ((m, opt), (m2, opt2)):
            oo.zero_grad()
            mm(x).sum().backward()
            oo.step()
        for (name, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
            if not torch.equal(a, b):
                fail(f"after one more step {name} differs")
        print(f"PASSED: {case}: Adam.load_state_dict(torch.load(export)) "
              f"restores {len(got_state)} parameter states; the next step "
              "matches")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def spell_positions_as_str(ckpt):
    """Rewrites `.metadata` as dcpp wrote it before list positions were
    ints: every path part a str."""
    path = os.path.join(ckpt, ".metadata")
    md = compat.RemappingReader(ckpt).read_metadata()
    md.planner_data = {k: tuple(str(x) for x in v)
                       for k, v in md.planner_data.items()}
    if not any("0" in v for v in md.planner_data.values()):
        fail("expected list positions in planner_data")
    with open(path, "wb") as f:
        pickle.dump(md, f)


GOOD = {
    "model_state_dict": (lambda: model().state_dict(), "1.13"),
    "training_checkpoint": (training_checkpoint, "2"),
    "views": (views, "1.13"),
    "dtypes": (dtypes, "2"),
}


# -- hostile inputs ------------------------------------------------------------


class _Storage:
    def __init__(self, numel):
        self.numel = numel


class _View:
    """Pickles as torch.save pickles a tensor, with any offset/size/stride."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        storage, offset, size, stride = self.args
        return (torch._utils._rebuild_tensor_v2,
                (storage, offset, size, stride, False, OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, "0", "cpu", obj.numel)
        return None


def write_archive(path, pkl, storages):
    """What torch.save does, through torch's own zip writer."""
    w = torch._C.PyTorchFileWriter(path)
    w.write_record("data.pkl", pkl, len(pkl))
    for key, data in storages.items():
        w.write_record("data/" + key, data, len(data))
    w.write_end_of_file()


def view_file(path, offset, size, stride):
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({"x": _View(_Storage(10), offset, size, stride)})
    storage = torch.arange(10.0).numpy().tobytes()
    write_archive(path, buf.getvalue(), {"0": storage})


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def hostile(name, scratch):
    """Writes the hostile input; returns (path, text the error must hold)."""
    path = os.path.join(scratch, "in.pt")
    marker = os.path.join(scratch, "ran")
    if name == "reduce_os_system":
        torch.save({"w": torch.ones(2), "evil": _System("touch " + marker)}, path)
        return path, "global posix.system (under 'evil') is not allowed"
    if name == "global_outside_allowlist":
        import argparse
        torch.save({"w": torch.ones(2), "args": argparse.Namespace(lr=0.1)}, path)
        return path, "global argparse.Namespace (under 'args') is not allowed"
    if name == "view_offset_past_storage":
        view_file(path, 20, (4,), (1,))
        return path, "tensor 'x': view (offset 20, sizes [4], strides [1]) exceeds its storage of 10 elements"
    if name == "size_1e6_over_10":
        view_file(path, 0, (1000000,), (1,))
        return path, "tensor 'x': view (offset 0, sizes [1000000], strides [1]) exceeds its storage"
    if name == "negative_stride":
        view_file(path, 9, (3,), (-1,))
        return path, "tensor 'x': negative size or stride in [3] / [-1]"
    if name == "nested_100000":
        pkl = b"\x80\x02}" + b"X\x01\x00\x00\x00k}" * 100000 + b"s" * 100000 + b"."
        write_archive(path, pkl, {})
        return path, "data.pkl: pickle: nesting deeper than 256"
    if name == "key_collision":
        torch.save({1: torch.ones(2), "1": torch.zeros(2)}, path)
        return path, "keys 1 and '1' of the top level both become the key '1'"
    if name == "legacy_format":
        torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
        return path, "the legacy (non-zip) torch.save format"
    raise KeyError(name)


HOSTILE = ["reduce_os_system", "global_outside_allowlist",
           "view_offset_past_storage", "size_1e6_over_10", "negative_stride",
           "nested_100000", "key_collision", "legacy_format"]


def check_hostile(name):
    scratch = tempfile.mkdtemp(prefix="dcpp-import-hostile-")
    try:
        src, want = hostile(name, scratch)
        ckpt = os.path.join(scratch, "ckpt")
        p = run_import(src, ckpt)
        lines = p.stderr.strip().splitlines()
        if p.returncode != 1:
            fail(f"exit code {p.returncode}, expected 1")
        if len(lines) != 1 or not lines[0].startswith("dcpp: import: "):
            fail(f"expected one error line, got {lines!r}")
        if want not in lines[0]:
            fail(f"the error does not say {want!r}")
        if os.path.exists(ckpt):
            fail(f"{ckpt} was created: {os.listdir(ckpt)}")
        if os.path.exists(os.path.join(scratch, "ran")):
            fail("the pickled os.system call ran")
        print(f"PASSED: {name}: refused, nothing written: {lines[0]}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if case in GOOD:
    make, flavor = GOOD[case]
    check_good(make(), flavor)
elif case == "optimizer_round_trip":
    optimizer_round_trip("2")
    optimizer_round_trip("1.13")
elif case == "old_str_positions":
    optimizer_round_trip("1.13", old_str_positions=True)
elif case in HOSTILE:
    check_hostile(case)
else:
    fail(f"unknown case {case}")
