#!/usr/bin/env python3
"""dcpp's safetensors storage against an independent reader and writer.

    safetensors_test.py TOOL CLI CASE

TOOL is tests/e2e/safetensors_tool (in-process rank groups), CLI the `dcpp`
binary. The reader and writer here are a few lines of `json` + `struct` +
`torch.frombuffer` (the `safetensors` package is not in Debian), written
from the format's description, not from dcpp's code.

Cases:
  dcpp_to_python  multi-rank saves (row- and column-sharded tensors, whole
                  tensors of several dtypes, a bytes value) read here
  python_to_dcpp  files written here load into dcpp on 1, 2 and 3 ranks
                  (resharded), single file and indexed shards
  hostile         crafted headers are refused with an error naming the file
                  and the tensor
  hostile_sizes   headers beyond the bounds on tensors per file and rank
                  are refused within seconds
  cli             dcpp export / import / inspect on safetensors

Exit 0 on success, 1 on failure, 77 (printing why) if torch cannot be
imported by this interpreter.
"""
import base64
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

SKIP = 77
try:
    import torch
except Exception as e:  # noqa: BLE001
    print(f"SKIP: torch cannot be imported by {sys.executable}: {e!r}")
    sys.exit(SKIP)

tool, dcpp_cli, case = sys.argv[1], sys.argv[2], sys.argv[3]

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
          "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "C64": torch.complex64}
NAMES = {v: k for k, v in DTYPES.items()}


def fail(msg):
    print("FAILED: " + msg)
    sys.exit(1)


def expected():
    return {
        "row": torch.arange(24, dtype=torch.float32).reshape(6, 4) * 1.5,
        "col": torch.arange(30, dtype=torch.float64).reshape(5, 6) - 7,
        "i": torch.arange(7, dtype=torch.int64) * 1000003,
        "h": (torch.arange(9, dtype=torch.float32).reshape(3, 3) / 4)
        .to(torch.bfloat16),
        "b": torch.arange(5) % 2 == 0,
        "u": (torch.arange(8, dtype=torch.int32).reshape(4, 2) * 30)
        .to(torch.uint8),
    }


def read_file(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    buf = data[8 + n:]
    out = {}
    for name, e in header.items():
        begin, end = e["data_offsets"]
        dt = DTYPES[e["dtype"]]
        if end > begin:
            t = torch.frombuffer(bytearray(buf[begin:end]), dtype=dt)
        else:
            t = torch.empty(0, dtype=dt)
        out[name] = t.reshape(e["shape"])
    return out, meta


def read_checkpoint(d):
    index = os.path.join(d, "model.safetensors.index.json")
    if not os.path.exists(index):
        return read_file(os.path.join(d, "model.safetensors")) + (1,)
    with open(index) as f:
        wm = json.load(f)["weight_map"]
    out, meta = {}, {}
    for file in sorted(set(wm.values())):
        t, m = read_file(os.path.join(d, file))
        for name in t:
            if wm.get(name) != file:
                fail(f"{name} is in {file}, the index says {wm.get(name)}")
        out.update(t)
        meta.update(m)
    return out, meta, len(set(wm.values()))


def write_file(path, tensors, meta=None):
    header, pos, blobs = {}, 0, []
    if meta:
        header["__metadata__"] = meta
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        if t.dtype == torch.bool:
            data = t.to(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [pos, pos + len(data)]}
        pos += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def run(*args):
    return subprocess.run([str(a) for a in args], capture_output=True,
                          text=True, timeout=120)


def check_values(got, want, what):
    for name, w in want.items():
        if name not in got:
            fail(f"{what}: {name} missing")
        g = got[name]
        if g.dtype != w.dtype or g.shape != w.shape or not torch.equal(g, w):
            fail(f"{what}: {name} differs: {g} vs {w}")


def dcpp_to_python(tmp):
    for world, shard in ((2, None), (3, None), (2, 100)):
        d = os.path.join(tmp, f"w{world}_{shard}")
        args = [tool, "save", d, world] + ([shard] if shard else [])
        r = run(*args)
        if r.returncode != 0:
            fail(f"save on {world} ranks: {r.stdout}{r.stderr}")
        got, meta, files = read_checkpoint(d)
        what = f"saved on {world} ranks, max shard {shard}"
        check_values(got, expected(), what)
        if shard and files < 2:
            fail(f"{what}: expected several shard files, got {files}")
        if meta.get("format") != "pt":
            fail(f"{what}: __metadata__ {meta}")
        epoch = torch.load(io.BytesIO(base64.b64decode(
            meta["dcpp.bytes.epoch"])))
        if epoch != 7:
            fail(f"{what}: epoch {epoch}")
        left = [f for f in os.listdir(d) if f.endswith((".part", ".tmp"))]
        if left:
            fail(f"{what}: staging files left: {left}")
        print(f"ok: {what}: {sorted(got)} in {files} file(s)")


def python_to_dcpp(tmp):
    single = os.path.join(tmp, "single")
    os.makedirs(single)
    write_file(os.path.join(single, "model.safetensors"), expected(),
               {"format": "pt"})
    sharded = os.path.join(tmp, "sharded")
    os.makedirs(sharded)
    e = expected()
    parts = [["b", "col"], ["h", "i"], ["row", "u"]]
    wm = {}
    for k, names in enumerate(parts):
        file = f"model-{k + 1:05d}-of-{len(parts):05d}.safetensors"
        write_file(os.path.join(sharded, file), {n: e[n] for n in names})
        wm.update({n: file for n in names})
    with open(os.path.join(sharded, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, f)
    for path in (single, os.path.join(single, "model.safetensors"), sharded,
                 os.path.join(sharded, "model.safetensors.index.json")):
        for world in (1, 2, 3):
            r = run(tool, "load", path, world)
            if r.returncode != 0:
                fail(f"load {path} on {world} ranks: {r.stdout}{r.stderr}")
            print(f"ok: {os.path.relpath(path, tmp)} on {world} rank(s)")


def hostile(tmp):
    good_header = {"x": {"dtype": "F32", "shape": [2],
                         "data_offsets": [0, 8]}}
    cases = {
        "huge_length": (struct.pack("<Q", 1 << 40) + b"{}", "exceeds"),
        "past_end": (struct.pack("<Q", 64) + b"{}", "past the end"),
        "bad_json": (struct.pack("<Q", 7) + b"{\"x\": [", "not valid JSON"),
        "offsets_past_end": ({"x": {"dtype": "F32", "shape": [4],
                                    "data_offsets": [0, 16]}}, "'x'"),
        "overlap": ({"x": {"dtype": "F32", "shape": [2],
                           "data_offsets": [0, 8]},
                     "y": {"dtype": "F32", "shape": [1],
                           "data_offsets": [4, 8]}}, "overlaps"),
        "wrong_size": ({"x": {"dtype": "F64", "shape": [2],
                              "data_offsets": [0, 8]}}, "need 16"),
        "unknown_dtype": ({"x": {"dtype": "F8_E4M3", "shape": [8],
                                 "data_offsets": [0, 8]}}, "F8_E4M3"),
        "negative_shape": ({"x": {"dtype": "F32", "shape": [-2],
                                  "data_offsets": [0, 8]}}, "'x'"),
        "metadata_not_str": (dict(good_header, __metadata__={"a": 1}),
                             "__metadata__"),
    }
    for name, (spec, needle) in cases.items():
        path = os.path.join(tmp, name + ".safetensors")
        if isinstance(spec, dict):
            text = json.dumps(spec).encode()
            data = struct.pack("<Q", len(text)) + text + b"\0" * 8
        else:
            data = spec
        with open(path, "wb") as f:
            f.write(data)
        r = run(tool, "load", path, 1)
        out = r.stdout + r.stderr
        if r.returncode != 1 or needle not in out or path not in out:
            fail(f"{name}: exit {r.returncode}, wanted '{needle}' and the "
                 f"file named: {out}")
        print(f"ok: {name} refused: {out.strip().splitlines()[-1]}")


def write_header(path, header, data):
    text = json.dumps(header, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def hostile_sizes(tmp):
    """Headers whose decoding used to cost more than linear time: a million
    tensors (60 MB, under the 100 MB header bound) and a shape of rank
    100,000 (0.6 MB). inspect and import end within seconds, refusing with
    the bound, naming the file (and the tensor)."""
    many = os.path.join(tmp, "many.safetensors")
    n = 1000000
    header = {f"t.{i}": {"dtype": "F32", "shape": [1],
                         "data_offsets": [4 * i, 4 * i + 4]} for i in range(n)}
    write_header(many, header, b"\0" * (4 * n))
    deep = os.path.join(tmp, "deep.safetensors")
    write_header(deep, {"x": {"dtype": "U8", "shape": [1] * 100000,
                              "data_offsets": [0, 1]}}, b"\0")
    for path, needles in ((many, ["tensors", "limit"]),
                          (deep, ["tensor 'x'", "rank 100000", "limit"])):
        for cmd in (["inspect", path], ["import", path, path + ".ckpt"]):
            t0 = time.monotonic()
            r = run(dcpp_cli, *cmd)
            secs = time.monotonic() - t0
            err = r.stderr.strip()
            if r.returncode != 1 or path not in err \
                    or not all(x in err for x in needles):
                fail(f"dcpp {cmd[0]} {path}: exit {r.returncode}: {err}")
            if secs > 20:
                fail(f"dcpp {cmd[0]} {path} took {secs:.1f} s")
            if os.path.exists(path + ".ckpt/.metadata"):
                fail(f"import of {path} committed a checkpoint")
            print(f"ok: {cmd[0]} refused in {secs:.1f} s: {err}")


def cli(tmp):
    src = os.path.join(tmp, "in.safetensors")
    write_file(src, expected(), {"format": "pt", "source": "test"})
    ckpt = os.path.join(tmp, "ckpt")
    r = run(dcpp_cli, "import", src, ckpt)
    if r.returncode != 0:
        fail(f"import: {r.stdout}{r.stderr}")
    r = run(dcpp_cli, "inspect", ckpt)
    if r.returncode != 0 or "row" not in r.stdout:
        fail(f"inspect of the imported checkpoint: {r.stdout}{r.stderr}")
    # The header's string metadata is kept beside the checkpoint, not as a
    # key of the state dict: export to .pt gives the tensors only.
    if "__metadata__" in r.stdout:
        fail(f"__metadata__ became a key of the checkpoint: {r.stdout}")
    pt = os.path.join(tmp, "out.pt")
    r = run(dcpp_cli, "export", ckpt, pt)
    if r.returncode != 0:
        fail(f"export to .pt: {r.stdout}{r.stderr}")
    got = torch.load(pt)
    if set(got) != set(expected()):
        fail(f"export to .pt: keys {sorted(got)}, want {sorted(expected())}")
    check_values(got, expected(), "import + export to .pt")
    out = os.path.join(tmp, "out.safetensors")
    r = run(dcpp_cli, "export", ckpt, out)
    if r.returncode != 0:
        fail(f"export: {r.stdout}{r.stderr}")
    got, meta = read_file(out)
    check_values(got, expected(), "import + export")
    if meta.get("source") != "test":
        fail(f"__metadata__ not kept through import + export: {meta}")
    r = run(dcpp_cli, "inspect", out)
    if r.returncode != 0 or "BF16" not in r.stdout or "source" not in r.stdout:
        fail(f"inspect {out}: {r.stdout}{r.stderr}")
    print(r.stdout)
    # A tensor named __metadata__ (the name the format reserves) is refused
    # by the export, naming it; nothing is written.
    src_pt = os.path.join(tmp, "reserved.pt")
    torch.save({"__metadata__": torch.ones(2), "w": torch.zeros(3)}, src_pt)
    reserved = os.path.join(tmp, "reserved")
    r = run(dcpp_cli, "import", src_pt, reserved)
    if r.returncode != 0:
        fail(f"import {src_pt}: {r.stdout}{r.stderr}")
    out2 = os.path.join(tmp, "reserved.safetensors")
    r = run(dcpp_cli, "export", reserved, out2)
    if r.returncode != 1 or "'__metadata__'" not in r.stderr \
            or "reserved" not in r.stderr or os.path.exists(out2):
        fail(f"export of a tensor named __metadata__: exit {r.returncode}: "
             f"{r.stdout}{r.stderr}")
    print("ok: " + r.stderr.strip())
    bad = os.path.join(tmp, "bad.safetensors")
    with open(bad, "wb") as f:
        f.write(struct.pack("<Q", 1 << 40))
    r = run(dcpp_cli, "inspect", bad)
    if r.returncode != 1 or bad not in r.stderr:
        fail(f"inspect of a hostile file: exit {r.returncode}: {r.stderr}")
    print("ok: cli")


tmp = tempfile.mkdtemp(prefix="dcpp_safetensors_")
try:
    {"dcpp_to_python": dcpp_to_python, "python_to_dcpp": python_to_dcpp,
     "hostile": hostile, "hostile_sizes": hostile_sizes,
     "cli": cli}[case](tmp)
finally:
    shutil.rmtree(tmp, ignore_errors=True)
print("PASSED")
