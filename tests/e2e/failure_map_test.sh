#!/usr/bin/env bash
# Failures as data over ZeroMQ: a save on 4 rank processes in which ranks 1
# and 3 fail with different errors. Every rank must report a
# checkpoint_failed whose map holds exactly ranks 1 and 3, each with its own
# error code (rank 1: an injected write failure, rank 3: a full disk), as
# the coordinator rank's dcpp-worker prints it from the failure's data, one
# line per failing rank; every other rank prints one line.
#   failure_map_test.sh BUILD_APPS_DIR
set -uo pipefail
apps="$1"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
fail() { echo "FAILED: $*"; exit 1; }
export DCPP_SECRET=failure-map-test-secret
common=(--dir "$tmp/ckpt" --size-mb 4 --layout row --step-timeout 20
        --peer-timeout-ms 3000)

DCPP_FAULT="write:fail@1;io:enospc@3:1" "$apps/dcpp-launch" --nproc 4 -- \
  "$apps/dcpp-worker" save "${common[@]}" > "$tmp/out" 2>&1 \
  && fail "a save in which ranks 1 and 3 fail must fail: $(cat "$tmp/out")"
[ ! -e "$tmp/ckpt/.metadata" ] || fail "the failed save committed"
# The coordinator rank's process (0) prints the map: exactly ranks 1 and 3,
# each with its own code. Every other rank prints one line: ranks 1 and 3
# their own error, rank 2 which ranks failed.
lines=$(grep "^dcpp-worker: rank 0/4: rank " "$tmp/out" | sort)
ranks=$(echo "$lines" | sed -E 's/.*: rank ([0-9]+) failed in step.*/\1/' \
        | tr '\n' ' ')
[ "$ranks" = "1 3 " ] \
  || fail "rank 0 reports failing ranks '$ranks', want '1 3': $(cat "$tmp/out")"
echo "$lines" | grep -q "rank 1 failed in step write: dcpp::injected_fault: " \
  || fail "rank 0: rank 1's own code is lost: $lines"
echo "$lines" | grep -q "rank 3 failed in step write: dcpp::storage_failure: " \
  || fail "rank 0: rank 3's own code is lost: $lines"
grep -q "^dcpp-worker: rank 0/4 failed in step save: save 1 failed in step write: ranks 1 (injected_fault), 3 (storage_failure) failed (2 of 4)$" "$tmp/out" \
  || fail "rank 0's summary line: $(grep '^dcpp-worker: rank 0/4' "$tmp/out")"
grep -q "^dcpp-worker: rank 1/4 failed in step save: save 1 failed in step write: dcpp::injected_fault: " "$tmp/out" \
  || fail "rank 1 does not print its own error: $(grep '^dcpp-worker: rank 1/4' "$tmp/out")"
grep -q "^dcpp-worker: rank 3/4 failed in step save: save 1 failed in step write: dcpp::storage_failure: " "$tmp/out" \
  || fail "rank 3 does not print its own error: $(grep '^dcpp-worker: rank 3/4' "$tmp/out")"
grep -q "^dcpp-worker: rank 2/4 failed in step save: save 1 failed in step write: ranks 1 (injected_fault), 3 (storage_failure) failed (2 of 4) (the coordinator's process prints why)$" "$tmp/out" \
  || fail "rank 2 does not say which ranks failed: $(grep '^dcpp-worker: rank 2/4' "$tmp/out")"
# One line per failure per process: 1 + 2 from the coordinator rank's
# process, 1 from each other rank (it was 1 + 2 from each of the 4).
n=$(grep -c "^dcpp-worker: rank " "$tmp/out")
[ "$n" -eq 6 ] || fail "$n lines from the ranks, want 6: $(grep '^dcpp-worker: rank ' "$tmp/out")"
# Each rank's error names the storage call once, not twice.
! grep -q "write_data: write_data\|(part 1 of 1): write_data:" "$tmp/out" \
  || fail "an error names its call twice: $(grep -m1 'write_data:' "$tmp/out")"
echo "failure_map_test: every rank names exactly ranks 1 (injected_fault) and 3 (storage_failure)"
