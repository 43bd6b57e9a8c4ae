#!/usr/bin/env bash
# PyTorch 2.6 runs in the chroot: torch's version, and a 2-rank DCP save
# under torchrun (TCPStore without libuv) loaded back on 1 rank.
set -euo pipefail
scratch=$1
rm -rf "$scratch"; mkdir -p "$scratch"
cat >"$scratch/save.py" <<'PY'
import os, sys, torch, torch.distributed as dist
import torch.distributed.checkpoint as dcp
dist.init_process_group("gloo")
r = dist.get_rank()
dcp.save({"w": torch.arange(12.0).reshape(3, 4) + r * 0, "step": 7},
         checkpoint_id=sys.argv[1])
dist.barrier()  # (2.6 gloo: destroy without it can hang one rank)
dist.destroy_process_group()
PY
cat >"$scratch/load.py" <<'PY'
import sys, torch, torch.distributed.checkpoint as dcp
assert torch.__version__.startswith("2.6"), torch.__version__
sd = {"w": torch.zeros(3, 4), "step": 0}
dcp.load(sd, checkpoint_id=sys.argv[1])
assert torch.equal(sd["w"], torch.arange(12.0).reshape(3, 4)), sd["w"]
assert sd["step"] == 7, sd["step"]
print("torch", torch.__version__, "DCP save on 2 ranks, load on 1: ok")
PY
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
run="$DCPP_TORCH2_RUN --bind $scratch --cwd $scratch --"
$run torchrun --nnodes 1 --nproc_per_node 2 --master_port "$port" \
  --monitor_interval 1 save.py "$scratch/ck" >"$scratch/save.log" 2>&1 \
  || { cat "$scratch/save.log"; exit 1; }
$run python3 load.py "$scratch/ck"
