#!/usr/bin/env python3
"""PyTorch 1.13 DCP: save on one world size, load on another (resharding).

    /usr/bin/python3 scripts/bench_dcp_reshard.py --save-world 2 --load-world 4 --size-mb 1024

bench_peer_dcp.py saves and loads with the same ranks; this companion saves
the same row-sharded state dict (ShardedTensors, torch.tensor_split rows,
values from bench_peer_dcp.py's seeds) on --save-world gloo ranks, drops the
page cache, then loads it on --load-world ranks into zeroed destination
shards allocated before the timed load: cold, then warm. Times are barrier
to barrier, the slowest rank's. Every loaded row is checked against the
saved values. Prints one JSON line.
"""
import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_peer_dcp as peer  # noqa: E402

MiB = 1 << 20


def _shard_setup(world, rank):
    """Imports torch's DCP (after the Python 3.11 shim) and returns a builder
    of row-sharded tensors for `rank` of `world`."""
    peer.py311_dataclass_shim()
    import torch
    from torch.distributed._shard.sharded_tensor import ShardedTensor, Shard
    from torch.distributed._shard.sharded_tensor.metadata import ShardedTensorMetadata, TensorProperties
    from torch.distributed._shard.metadata import ShardMetadata

    def make_sharded(shape, local):
        mds = [ShardMetadata([off] + [0] * (len(shape) - 1), [n] + list(shape[1:]), f"rank:{r}/cpu")
               for r, (off, n) in enumerate(peer.row_bounds(shape[0], world))]
        props = TensorProperties(dtype=torch.float32, layout=torch.strided, requires_grad=False,
                                 memory_format=torch.contiguous_format, pin_memory=False)
        gmd = ShardedTensorMetadata(shards_metadata=mds, size=torch.Size(shape), tensor_properties=props)
        return ShardedTensor._init_from_local_shards_and_global_metadata([Shard(local, mds[rank])], gmd)

    return make_sharded


def gen(name, part, shape):
    """The values bench_peer_dcp.py gives rank `part`'s shard of `name`."""
    import torch
    g = torch.Generator().manual_seed(peer.seed_for(name, part))
    return torch.rand(shape, generator=g, dtype=torch.float32)


def expected_rows(name, shape, save_world, off, n):
    """Rows [off, off + n) of `name` as saved by `save_world` ranks."""
    import torch
    parts = []
    for r, (s_off, s_n) in enumerate(peer.row_bounds(shape[0], save_world)):
        lo, hi = max(off, s_off), min(off + n, s_off + s_n)
        if lo < hi:
            saved = gen(name, r, (s_n,) + tuple(shape[1:]))
            parts.append(saved[lo - s_off:hi - s_off])
    return torch.cat(parts) if parts else torch.zeros((0,) + tuple(shape[1:]))


def save_rank(rank, world, port, args, ckpt_dir):
    peer.py311_dataclass_shim()  # before torch.distributed imports
    import torch
    import torch.distributed as dist
    import torch.distributed._shard.checkpoint as dcp
    make_sharded = _shard_setup(world, rank)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    sd = {}
    for name, shape in peer.make_layout(args.size_mb * MiB, args.hidden):
        _, n = peer.row_bounds(shape[0], world)[rank]
        sd[name] = make_sharded(shape, gen(name, rank, (n,) + tuple(shape[1:])))
    dcp.save_state_dict(sd, dcp.FileSystemWriter(ckpt_dir))
    dist.barrier()
    dist.destroy_process_group()


def load_rank(rank, world, port, args, ckpt_dir, out_path):
    peer.py311_dataclass_shim()  # before torch.distributed imports
    import torch
    import torch.distributed as dist
    import torch.distributed._shard.checkpoint as dcp
    make_sharded = _shard_setup(world, rank)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    layout = peer.make_layout(args.size_mb * MiB, args.hidden)

    t = time.perf_counter()
    dst = {}
    for name, shape in layout:
        _, n = peer.row_bounds(shape[0], world)[rank]
        dst[name] = torch.zeros((n,) + tuple(shape[1:]), dtype=torch.float32)
    alloc_s = time.perf_counter() - t

    def timed_load():
        for t in dst.values():
            t.zero_()
        sd = {name: make_sharded(shape, dst[name]) for name, shape in layout}
        dist.barrier()
        t0 = time.perf_counter()
        dcp.load_state_dict(sd, dcp.FileSystemReader(ckpt_dir))
        dist.barrier()
        return time.perf_counter() - t0

    def verify():
        for name, shape in layout:
            off, n = peer.row_bounds(shape[0], world)[rank]
            if not torch.equal(dst[name], expected_rows(name, shape, args.save_world, off, n)):
                return False
        return True

    def slowest(x):
        v = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(v, op=dist.ReduceOp.MAX)
        return float(v.item())

    cold_s = slowest(timed_load())
    ok = verify()
    warm_s = slowest(timed_load())
    ok = ok and verify()
    all_ok = slowest(0.0 if ok else 1.0) == 0.0
    alloc_s = slowest(alloc_s)
    if rank == 0:
        gb = args.size_mb * MiB / 1e9
        rec = {"bench": "dcp_reshard", "torch": torch.__version__, "size_mb": args.size_mb,
               "hidden": args.hidden, "save_world": args.save_world, "world": world, "mode": "sharded",
               "n_tensors": len(layout), "alloc_s": alloc_s,
               "load_cold_s": cold_s, "load_cold_GBps": gb / cold_s,
               "load_warm_s": warm_s, "load_warm_GBps": gb / warm_s, "verified": all_ok}
        with open(out_path, "w") as f:
            f.write(json.dumps(rec) + "\n")
    dist.barrier()
    dist.destroy_process_group()


def run_ranks(target, world, extra):
    """Runs `target(rank, world, port, *extra)` on `world` spawned processes;
    returns the first non-zero exit code, or 0."""
    ctx = mp.get_context("spawn")
    port = peer.free_port()
    procs = [ctx.Process(target=target, args=(r, world, port) + extra) for r in range(world)]
    for p in procs:
        p.start()
    rc = 0
    for p in procs:
        p.join()
        rc = rc or p.exitcode
    return rc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--save-world", type=int, default=2)
    ap.add_argument("--load-world", type=int, default=4)
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--dir", default=None, help="parent dir for the checkpoint (default: a temp dir)")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="dcp_reshard_", dir=args.dir)
    ckpt_dir = os.path.join(base, "ckpt")
    out_path = os.path.join(base, "result.json")
    try:
        rc = run_ranks(save_rank, args.save_world, (args, ckpt_dir))
        if rc:
            sys.exit(f"save on {args.save_world} ranks failed (exit {rc})")
        method = peer.drop_cache(peer.list_files(ckpt_dir))
        rc = run_ranks(load_rank, args.load_world, (args, ckpt_dir, out_path))
        if rc:
            sys.exit(f"load on {args.load_world} ranks failed (exit {rc})")
        with open(out_path) as f:
            rec = json.loads(f.read())
        rec["cache_drop"] = method
        print(json.dumps(rec), flush=True)
        sys.exit(0 if rec["verified"] else 3)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
