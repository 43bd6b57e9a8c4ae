#!/usr/bin/env bash
# The main job: builds dcpp and runs the demo (save a synthetic model's
# state dict, load it back, verify, print what happened).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
dir="${1:-$(mktemp -d /tmp/dcpp-demo.XXXXXX)}"
./build/apps/dcpp_demo --dir "$dir"
