"""Checks `.metadata` files written by dcpp against the real PyTorch DCP.

Run with the Debian interpreter that has python3-torch 1.13:

    /usr/bin/python3 -B scripts/check_metadata_with_torch.py dump FILE
    /usr/bin/python3 -B scripts/check_metadata_with_torch.py dump2 FILE
    /usr/bin/python3 -B scripts/check_metadata_with_torch.py load DIR

* dump  -- unpickles FILE with plain `pickle.load` (torch 1.13 classes),
           checks the object types, and prints a canonical dump of it.
* dump2 -- the same for a file in the torch >= 2 layout: 1.13 has no
           `torch.distributed.checkpoint`, so a remapping unpickler maps
           those class paths onto the 1.13 classes (StorageMeta onto a
           stand-in), as a torch-2-to-1.13 reader would.
* load  -- runs DCP 1.13 `load_state_dict(no_dist=True)` on DIR (the
           1.13 fixture's data files with a dcpp-written `.metadata`) and
           compares every value with the fixture's state dict.

The dump has one sorted line per fact, in the same format the C++ test
produces from its `metadata` struct, so the two can be compared as strings.
Exit status: 0 pass, 1 fail, 77 skip (torch or its DCP cannot be imported;
the reason is printed as "SKIP: ...").
"""
import os
import pickle
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch113_py311_shim  # noqa: E402

SKIP = 77


def import_dcp():
    torch113_py311_shim.install()
    try:
        import torch  # noqa: F401
        import torch.distributed._shard.checkpoint as dcp
        import torch.distributed._shard.checkpoint.filesystem as fs
        import torch.distributed._shard.checkpoint.metadata as md
        import torch.distributed._shard.sharded_tensor.metadata as stmd
    except Exception as ex:  # any import problem means: cannot check here
        print(f"SKIP: cannot import torch 1.13 DCP with {sys.executable} "
              f"(Python {sys.version.split()[0]}): "
              f"{type(ex).__name__}: {ex}")
        sys.exit(SKIP)
    return torch, dcp, fs, md, stmd


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def dims(size):
    return "[" + ", ".join(str(int(d)) for d in size) + "]"


def strip_torch(obj):
    text = str(obj)
    return text[len("torch."):] if text.startswith("torch.") else text


def canonical(m, md, fs, stmd):
    """One line per fact, sorted; mirrors `dump()` in the C++ test."""
    if not isinstance(m, md.Metadata):
        fail(f"top-level object is {type(m)}")
    lines = []
    for fqn, item in m.state_dict_metadata.items():
        if isinstance(item, md.BytesStorageMetadata):
            lines.append(f"item {fqn} bytes")
            continue
        if not isinstance(item, md.TensorStorageMetadata):
            fail(f"{fqn}: {type(item)}")
        p = item.properties
        if not isinstance(p, stmd.TensorProperties):
            fail(f"{fqn}: properties are {type(p)}")
        chunks = ";".join(f"{dims(c.offsets)}/{dims(c.sizes)}"
                          for c in item.chunks)
        for c in item.chunks:
            if not isinstance(c, md.ChunkStorageMetadata):
                fail(f"{fqn}: chunk is {type(c)}")
        lines.append(
            f"item {fqn} tensor {strip_torch(p.dtype)} size={dims(item.size)}"
            f" rg={int(p.requires_grad)} pin={int(p.pin_memory)}"
            f" fmt={strip_torch(p.memory_format)}"
            f" layout={strip_torch(p.layout)} chunks={chunks}")
    for idx, info in m.storage_data.items():
        if not isinstance(idx, md.MetadataIndex):
            fail(f"storage key is {type(idx)}")
        if not isinstance(info, fs._StorageInfo):
            fail(f"storage value is {type(info)}")
        off = "-" if idx.offset is None else dims(idx.offset)
        hint = "-" if idx.index is None else str(idx.index)
        checksum = getattr(info, "checksum", None) or "-"
        lines.append(f"storage {idx.fqn} {off} index={hint}"
                     f" {info.relative_path} {info.offset} {info.length}"
                     f" checksum={checksum}")
    for key, path in (m.planner_data or {}).items():
        if not isinstance(path, tuple):
            fail(f"planner_data[{key}] is {type(path)}")
        lines.append(f"planner {key} " + "|".join(
            f"#{x}" if type(x) is int else str(x) for x in path))
    meta = getattr(m, "storage_meta", None)
    lines.append(f"version {getattr(m, 'version', None) or '-'}")
    lines.append(f"save_id {(meta and meta.save_id) or '-'}")
    cid = meta and meta.checkpoint_id
    lines.append(f"checkpoint_id {cid or '-'}")
    return sorted(lines)


def cmd_dump(path, remap):
    torch, dcp, fs, md, stmd = import_dcp()

    import torch113_compat  # the remapping unpickler for torch >= 2 paths

    with open(path, "rb") as f:
        m = (torch113_compat.RemappingUnpickler(f) if remap
             else pickle.Unpickler(f)).load()
    for line in canonical(m, md, fs, stmd):
        print(line)


def cmd_load(directory):
    torch, dcp, fs, md, stmd = import_dcp()
    expect = {
        "f32": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "bf16": torch.tensor([1.5, -2.0, 3.25, 0.5], dtype=torch.bfloat16),
        "i64": torch.tensor([7, -1, 2 ** 40], dtype=torch.int64),
        "f64_scalar": torch.tensor(3.5, dtype=torch.float64),
        "f32_t": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),
        "st": torch.arange(12, dtype=torch.float32).reshape(4, 3) + 0.5,
    }
    sd = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in expect.items()}
    sd["epoch"] = None
    sd["cfg"] = None
    dcp.load_state_dict(sd, dcp.FileSystemReader(directory), no_dist=True)
    for k, v in expect.items():
        if not torch.equal(sd[k], v):
            fail(f"{k}: loaded {sd[k]} expected {v}")
        print(f"PASS {k} {tuple(v.shape)} {v.dtype}")
    if sd["epoch"] != 3 or sd["cfg"] != {"lr": 0.1, "name": "dcp"}:
        fail(f"bytes items: {sd['epoch']!r} {sd['cfg']!r}")
    print("PASS epoch cfg")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("dump", "dump2", "load"):
        print(__doc__)
        sys.exit(2)
    if sys.argv[1] == "load":
        cmd_load(sys.argv[2])
    else:
        cmd_dump(sys.argv[2], remap=sys.argv[1] == "dump2")


if __name__ == "__main__":
    main()
