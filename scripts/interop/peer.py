"""PyTorch DCP (1.13, or >= 2) as the other side of dcpp's interoperability
tests.

    python3 peer.py save DIR --world W --layout L [--seed K] [--size-mb S]
    python3 peer.py load DIR --world W[,W2...] --layout L [--seed K] [--size-mb S]

Starts W gloo ranks on 127.0.0.1. `save` writes the synthetic model
(synthetic.py) with torch's own DCP save; `load` loads a checkpoint
(written by dcpp or torch) into this world's sharding, once per listed
world, and checks every value bit for bit. Prints one JSON line per world
and exits 0 only if every rank succeeded.

torch 1.13 (Debian bookworm's): flattened keys, ShardedTensors
(`save_state_dict`; `.metadata` with torch >= 2 class paths read through
torch113_compat). torch >= 2: the state dict nested as a model's would be
(dicts, the layers a list), sharded tensors as DTensors on a 1-d device
mesh (Shard(split dim), Replicate for the unsplit ones; plain tensors on 1
rank), `dcp.save`/`dcp.load` with `checkpoint_id`. Ranks are forked (not
spawned): torch's import is the slow part.
Exit code 77 means torch DCP is not available here (the reason is printed),
so callers can report a skip.
"""
import argparse
import json
import os
import socket
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

try:
    import torch
    TORCH2 = int(torch.__version__.split(".")[0]) >= 2
    import torch.distributed as dist
    import torch.multiprocessing as mp
    if TORCH2:
        import torch.distributed.checkpoint as dcp2
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor, Replicate, Shard
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    else:
        import torch113_compat as compat  # installs the import fix first
        import torch.distributed._shard.sharded_tensor as sharded_tensor
        from torch.distributed._shard.sharding_spec import ChunkShardingSpec
except Exception as ex:  # noqa: BLE001
    print(f"SKIP: torch DCP unavailable: {ex!r}")
    sys.exit(77)

import synthetic  # noqa: E402


def nest(flat):
    """Flattened keys to nested dicts; a dict whose keys are 0..n-1 becomes
    a list (as a model's ModuleList state would be traversed)."""
    root = {}
    for key, value in flat.items():
        node = root
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def listify(node):
        if not isinstance(node, dict):
            return node
        out = {k: listify(v) for k, v in node.items()}
        if out and sorted(out) == sorted(str(i) for i in range(len(out))):
            return [out[str(i)] for i in range(len(out))]
        return out

    return listify(root)


def make_state2(args, world, mesh, fill):
    """The synthetic model for torch >= 2: DTensors on `mesh` (world > 1)."""
    flat = {}
    for key, shape, dtype, split in synthetic.specs(args.size_mb, args.layout):
        if world == 1:
            flat[key] = (synthetic.expected_box(key, shape, [0] * len(shape), list(shape),
                                                dtype, args.seed)
                         if fill else torch.zeros(shape, dtype=dtype))
            continue
        placements = [Shard(split) if split >= 0 else Replicate()]
        size, off = compute_local_shape_and_global_offset(shape, mesh, placements)
        local = (synthetic.expected_box(key, shape, list(off), list(size), dtype, args.seed)
                 if fill else torch.zeros(size, dtype=dtype))
        flat[key] = DTensor.from_local(local, mesh, placements, run_check=False,
                                       shape=torch.Size(shape),
                                       stride=torch.empty(shape, device="meta").stride())
    flat["step"] = synthetic.STEP_BASE + args.seed if fill else None
    flat["optim.param_groups"] = synthetic.PARAM_GROUPS if fill else None
    return nest(flat)


def verify2(args, sd):
    """Differences of a loaded nested state from the synthetic model."""
    bad = []

    def get(key):
        node = sd
        for part in key.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    for key, shape, dtype, _ in synthetic.specs(args.size_mb, args.layout):
        value = get(key)
        if isinstance(value, DTensor):
            size, off = compute_local_shape_and_global_offset(
                shape, value.device_mesh, value.placements)
            local = value.to_local()
        else:
            size, off, local = list(shape), [0] * len(shape), value
        want = synthetic.expected_box(key, shape, list(off), list(size), dtype, args.seed)
        if local.dtype != dtype or not torch.equal(local, want):
            bad.append(f"{key}@{list(off)}")
    if get("step") != synthetic.STEP_BASE + args.seed:
        bad.append(f"step={get('step')!r}")
    if get("optim.param_groups") != synthetic.PARAM_GROUPS:
        bad.append(f"optim.param_groups={get('optim.param_groups')!r}")
    return bad


def make_state(args, rank, world, fill):
    sd = {}
    for key, shape, dtype, split in synthetic.specs(args.size_mb, args.layout):
        zeros = [0] * len(shape)
        if split < 0 or world == 1:
            t = (synthetic.expected_box(key, shape, zeros, list(shape), dtype, args.seed)
                 if fill else torch.zeros(shape, dtype=dtype))
            sd[key] = t
            continue
        spec = ChunkShardingSpec(dim=split, placements=[f"rank:{r}/cpu" for r in range(world)])
        st = sharded_tensor.zeros(spec, *shape, dtype=dtype)
        if fill:
            for shard in st.local_shards():
                off = list(shard.metadata.shard_offsets)
                size = list(shard.metadata.shard_sizes)
                shard.tensor.copy_(synthetic.expected_box(key, shape, off, size, dtype, args.seed))
        sd[key] = st
    sd["step"] = synthetic.STEP_BASE + args.seed if fill else None
    sd["optim.param_groups"] = synthetic.PARAM_GROUPS if fill else None
    return sd


def verify(args, sd):
    bad = []
    for key, shape, dtype, _ in synthetic.specs(args.size_mb, args.layout):
        value = sd[key]
        if not isinstance(value, sharded_tensor.ShardedTensor):
            want = synthetic.expected_box(key, shape, [0] * len(shape), list(shape), dtype, args.seed)
            if value.dtype != dtype or not torch.equal(value, want):
                bad.append(key)
            continue
        for shard in value.local_shards():
            off = list(shard.metadata.shard_offsets)
            size = list(shard.metadata.shard_sizes)
            want = synthetic.expected_box(key, shape, off, size, dtype, args.seed)
            if not torch.equal(shard.tensor, want):
                bad.append(f"{key}@{off}")
    if sd["step"] != synthetic.STEP_BASE + args.seed:
        bad.append(f"step={sd['step']!r}")
    if sd["optim.param_groups"] != synthetic.PARAM_GROUPS:
        bad.append(f"optim.param_groups={sd['optim.param_groups']!r}")
    return bad


def worker(rank, args, world, port, results):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        if TORCH2:
            mesh = init_device_mesh("cpu", (world,))
            sd = make_state2(args, world, mesh, args.mode == "save")
            if args.mode == "save":
                dcp2.save(sd, storage_writer=dcp2.FileSystemWriter(
                    args.dir, single_file_per_rank=args.per_rank))
                results[rank] = {"ok": True}
            else:
                dcp2.load(sd, checkpoint_id=args.dir)
                bad = verify2(args, sd)
                results[rank] = {"ok": not bad, "bad": bad[:10]}
        elif args.mode == "save":
            sd = make_state(args, rank, world, True)
            compat.dcp.save_state_dict(
                sd, compat.dcp.FileSystemWriter(args.dir, single_file_per_rank=args.per_rank))
            results[rank] = {"ok": True}
        else:
            sd = make_state(args, rank, world, False)
            compat.dcp.load_state_dict(sd, compat.RemappingReader(args.dir))
            bad = verify(args, sd)
            results[rank] = {"ok": not bad, "bad": bad[:10]}
    except BaseException:  # noqa: BLE001 (2.x's CheckpointException is one)
        results[rank] = {"ok": False, "error": traceback.format_exc()}
    finally:
        if TORCH2:
            # 2.6's gloo can hang a rank in destroy_process_group, even
            # after a barrier; the result is recorded, so the rank ends
            # without it.
            dist.barrier()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        dist.destroy_process_group()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["save", "load"])
    p.add_argument("dir")
    p.add_argument("--world", default="2", help="ranks; for load, several "
                   "worlds separated by commas load one after the other")
    p.add_argument("--layout", default="mixed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size-mb", type=float, default=4)
    p.add_argument("--per-rank", action="store_true",
                   help="FileSystemWriter(single_file_per_rank=True)")
    args = p.parse_args()
    args.dir = os.path.abspath(args.dir)
    ok = True
    with mp.Manager() as manager:
        for world in (int(w) for w in args.world.split(",")):
            results = manager.dict()
            mp.start_processes(worker, args=(args, world, free_port(), results), nprocs=world,
                               join=True, start_method="fork" if TORCH2 else "spawn")
            out = {r: results.get(r, {"ok": False, "error": "no result"}) for r in range(world)}
            world_ok = all(r["ok"] for r in out.values())
            ok = ok and world_ok
            print(json.dumps({"mode": args.mode, "torch": torch.__version__, "world": world,
                              "layout": args.layout, "ok": world_ok, "ranks": out}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
