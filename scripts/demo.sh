#!/usr/bin/env bash
# The main job: builds dcpp, then saves a synthetic transformer-like model
# with 2 ranks (2 processes under dcpp-launch, talking over ZeroMQ) and loads
# it back with 3 ranks in another sharding, verifying every value.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
dir="${1:-$(mktemp -d /tmp/dcpp-demo.XXXXXX)/ckpt}"
size="${DCPP_DEMO_SIZE_MB:-64}"
echo "== save: 2 ranks, mixed sharding, ${size} MiB -> $dir"
./build/apps/dcpp-launch --nproc 2 -- ./build/apps/dcpp-worker save \
  --dir "$dir" --size-mb "$size" --layout mixed
echo "== load: 3 ranks, row sharding, verify every value"
./build/apps/dcpp-launch --nproc 3 -- ./build/apps/dcpp-worker load \
  --dir "$dir" --size-mb "$size" --layout row --verify
echo "== the checkpoint, as dcpp sees it (PyTorch DCP reads the same files)"
./build/apps/dcpp inspect "$dir" | tail -n 4
