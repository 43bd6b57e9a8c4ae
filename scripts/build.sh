#!/usr/bin/env bash
# Configures and builds dcpp into build/ (Release with debug info).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
# torch translation units take ~1 GB of compiler memory each: two jobs fit.
cmake --build build -j "${DCPP_JOBS:-2}"
