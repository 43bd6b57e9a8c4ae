"""PyTorch 1.13 DCP as the other side of dcpp's interoperability tests.

    /usr/bin/python3 peer.py save DIR --world W --layout L [--seed K] [--size-mb S]
    /usr/bin/python3 peer.py load DIR --world W --layout L [--seed K] [--size-mb S]

Starts W gloo ranks on 127.0.0.1. `save` writes the synthetic model
(synthetic.py) with torch's own `save_state_dict`; `load` loads a checkpoint
(written by dcpp or torch, 1.13 or torch >= 2 class paths) into this
world's sharding and checks every value bit for bit. Prints one JSON line
and exits 0 only if every rank succeeded.
Exit code 77 means torch 1.13 DCP is not available here (the reason is
printed), so callers can report a skip.
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
    import torch113_compat as compat  # installs the import fix first
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    import torch.distributed._shard.sharded_tensor as sharded_tensor
    from torch.distributed._shard.sharding_spec import ChunkShardingSpec
except Exception as ex:  # noqa: BLE001
    print(f"SKIP: torch 1.13 DCP unavailable: {ex!r}")
    sys.exit(77)

import synthetic  # noqa: E402


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


def worker(rank, args, port, results):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=args.world)
    try:
        if args.mode == "save":
            sd = make_state(args, rank, args.world, True)
            compat.dcp.save_state_dict(
                sd, compat.dcp.FileSystemWriter(args.dir, single_file_per_rank=args.per_rank))
            results[rank] = {"ok": True}
        else:
            sd = make_state(args, rank, args.world, False)
            compat.dcp.load_state_dict(sd, compat.RemappingReader(args.dir))
            bad = verify(args, sd)
            results[rank] = {"ok": not bad, "bad": bad[:10]}
    except Exception:  # noqa: BLE001
        results[rank] = {"ok": False, "error": traceback.format_exc()}
    finally:
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
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--layout", default="mixed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size-mb", type=float, default=4)
    p.add_argument("--per-rank", action="store_true",
                   help="FileSystemWriter(single_file_per_rank=True)")
    args = p.parse_args()
    args.dir = os.path.abspath(args.dir)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(args, free_port(), results), nprocs=args.world, join=True)
        out = {r: results.get(r, {"ok": False, "error": "no result"}) for r in range(args.world)}
    ok = all(r["ok"] for r in out.values())
    print(json.dumps({"mode": args.mode, "world": args.world, "layout": args.layout,
                      "ok": ok, "ranks": out}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
