#!/usr/bin/env bash
# Failures as data over ZeroMQ: a save on 4 rank processes in which ranks 1
# and 3 fail with different errors. Every rank must report a
# checkpoint_failed whose map holds exactly ranks 1 and 3, each with its own
# error code (rank 1: an injected write failure, rank 3: a full disk), as
# dcpp-worker prints it from the failure's data, one line per failing rank.
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
for r in 0 1 2 3; do
  lines=$(grep "^dcpp-worker: rank $r/4: rank " "$tmp/out" | sort)
  ranks=$(echo "$lines" | sed -E 's/.*: rank ([0-9]+) failed in step.*/\1/' \
          | tr '\n' ' ')
  [ "$ranks" = "1 3 " ] \
    || fail "rank $r reports failing ranks '$ranks', want '1 3': $(cat "$tmp/out")"
  echo "$lines" | grep -q "rank 1 failed in step write: dcpp::injected_fault: " \
    || fail "rank $r: rank 1's own code is lost: $lines"
  echo "$lines" | grep -q "rank 3 failed in step write: dcpp::storage_failure: " \
    || fail "rank $r: rank 3's own code is lost: $lines"
done
# Each rank's error names the storage call once, not twice.
! grep -q "write_data: write_data\|(part 1 of 1): write_data:" "$tmp/out" \
  || fail "an error names its call twice: $(grep -m1 'write_data:' "$tmp/out")"
echo "failure_map_test: every rank names exactly ranks 1 (injected_fault) and 3 (storage_failure)"
