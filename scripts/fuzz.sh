#!/usr/bin/env bash
# Builds dcpp's libFuzzer harnesses (tests/fuzz) with clang, ASan and UBSan
# into build-fuzz/, then fuzzes each target for a while, starting from its
# committed corpus.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
#   SECONDS  run time per target (default 60)
#   TARGET   pickle, metadata, item, wire (default: all four; item builds
#            libtorch code, the slowest part of the build)
#
# Environment:
#   DCPP_FUZZ_BUILD  build directory (default build-fuzz)
#   DCPP_FUZZ_JOBS   parallel build jobs (default 2)
#   DCPP_FUZZ_MERGE  1: afterwards, replace tests/fuzz/corpus/<target>/ by a
#                    small subset of it and of what the run found that
#                    covers the same code (see merge_corpus)
#   DCPP_FUZZ_MAX_FILES  at most this many files per corpus (default 200)
#
# A run works on a scratch copy of the corpus (BUILD/fuzz-work/<target>), so
# the committed corpus only changes with DCPP_FUZZ_MERGE=1; keep it small
# (at most about 200 files and 2 MB per target). A crash, leak, timeout or
# out-of-memory input is saved as BUILD/fuzz-artifacts/<target>-<kind>-<sha1>
# and makes the script exit 1 once every target ran. Reproduce it with
#
#   BUILD/tests/fuzz/fuzz_<target> FILE
#
# and, once fixed, add FILE to tests/fuzz/corpus/<target>/: ctest replays
# every corpus file on every build (fuzz_corpus.<target>).
#
# Needs Debian's clang with libFuzzer: apt-get install clang libclang-rt-14-dev

set -euo pipefail

cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(pickle metadata item wire)
fi
build=${DCPP_FUZZ_BUILD:-build-fuzz}
jobs=${DCPP_FUZZ_JOBS:-2}

max_len() {
  case "$1" in
    metadata) echo 16384 ;;
    item) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

for t in "${targets[@]}"; do
  case "$t" in
    pickle|metadata|item|wire) ;;
    *) echo "fuzz.sh: unknown target '$t'" >&2; exit 2 ;;
  esac
done

if [ ! -f "$build/CMakeCache.txt" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDCPP_FUZZ=ON \
    -DDCPP_BUILD_TESTS=OFF -DDCPP_BUILD_APPS=OFF
fi
ninja -C "$build" -j "$jobs" "${targets[@]/#/fuzz_}"

# merge_corpus TARGET CORPUS WORK: replaces CORPUS with a small subset of
# CORPUS + WORK that covers every coverage edge the union covers: libFuzzer
# records what each input covers (-merge_control_file), then a greedy set
# cover picks inputs, most new edges first, up to DCPP_FUZZ_MAX_FILES (200).
# Inputs that allocate more than 64 MiB are left out (the corpus is replayed
# by every build); files named regress-* are always kept.
merge_corpus() {
  local t=$1 corpus=$2 work=$3 scratch
  scratch=$(mktemp -d)
  mkdir "$scratch/merged" "$scratch/chosen"
  "$build/tests/fuzz/fuzz_$t" -merge=1 -merge_control_file="$scratch/control" \
    -rss_limit_mb=2048 -malloc_limit_mb=64 -timeout=10 \
    "$scratch/merged" "$corpus" "$work" >"$scratch/log" 2>&1 \
    || { cat "$scratch/log" >&2; return 1; }
  python3 - "$scratch/control" "$scratch/chosen" \
    "${DCPP_FUZZ_MAX_FILES:-200}" <<'PY'
import os, shutil, sys
lines = open(sys.argv[1]).read().split("\n")
n = int(lines[0])
files = lines[2:2 + n]
cov = {}
for line in lines[2 + n:]:
    parts = line.split()
    if parts and parts[0] == "COV":
        cov[int(parts[1])] = set(parts[2:])
keep = [i for i in cov if os.path.basename(files[i]).startswith("regress-")]
covered = set().union(set(), *(cov[i] for i in keep))
chosen = list(keep)
while cov and len(chosen) < int(sys.argv[3]):
    best = max(cov, key=lambda i: (len(cov[i] - covered),
                                   -os.path.getsize(files[i])))
    if not cov[best] - covered:
        break
    chosen.append(best)
    covered |= cov[best]
for i in chosen:
    shutil.copy(files[i], sys.argv[2])
PY
  rm -f "$corpus"/*
  cp "$scratch/chosen"/* "$corpus"/
  rm -rf "$scratch"
  echo "== $corpus: $(ls "$corpus" | wc -l) files," \
    "$(cat "$corpus"/* | wc -c) bytes"
}

mkdir -p "$build/fuzz-artifacts"
failed=()
for t in "${targets[@]}"; do
  corpus=tests/fuzz/corpus/$t
  work=$build/fuzz-work/$t
  mkdir -p "$work"
  cp -n "$corpus"/* "$work"/ 2>/dev/null || true
  echo "== fuzz_$t for ${seconds}s (corpus: $(ls "$work" | wc -l) files)"
  if ! "$build/tests/fuzz/fuzz_$t" "$work" \
      -max_total_time="$seconds" -max_len="$(max_len "$t")" \
      -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$build/fuzz-artifacts/$t-"; then
    failed+=("$t")
    continue
  fi
  if [ "${DCPP_FUZZ_MERGE:-0}" = 1 ]; then
    merge_corpus "$t" "$corpus" "$work"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: failures in: ${failed[*]} (see $build/fuzz-artifacts)" >&2
  exit 1
fi
echo "fuzz.sh: no failures"
