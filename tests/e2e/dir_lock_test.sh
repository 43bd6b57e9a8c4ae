#!/usr/bin/env bash
# Two jobs saving into one checkpoint directory (issue 11): two
# `dcpp-launch --nproc 2 -- dcpp-worker save` runs with their own ports and
# secrets, started together. The first (its ranks report their writes 4 s
# late, so its save is surely still running) holds the directory lock; the
# second must fail at once naming the holder, the first must commit, and
# its checkpoint must load with --verify (nothing of it collected by the
# other). Without the lock both commit and each one's garbage collection
# removes the other's data.
#   dir_lock_test.sh BUILD_APPS_DIR
set -uo pipefail
apps="$1"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
dir="$tmp/ckpt"
fail() { echo "FAILED: $*"; exit 1; }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
common=(--dir "$dir" --size-mb 2 --layout mixed --step-timeout 30 --peer-timeout-ms 3000)
port_a=$(free_port)
port_b=$(free_port)
while [ "$port_b" = "$port_a" ]; do port_b=$(free_port); done

# An earlier checkpoint in the directory, as when a retried job starts.
DCPP_SECRET=dir-lock-first "$apps/dcpp-launch" --nproc 2 -- \
  "$apps/dcpp-worker" save "${common[@]}" --seed 1 \
  || fail "the first save must succeed"

start=$(date +%s)
DCPP_SECRET=dir-lock-job-a DCPP_FAULT="write:slow@*:4000" \
  "$apps/dcpp-launch" --nproc 2 --master-port "$port_a" -- \
  "$apps/dcpp-worker" save "${common[@]}" --seed 2 > "$tmp/out.a" 2>&1 &
pid_a=$!
# Job b starts as soon as job a's coordinator holds the lock or (a build
# without the lock) job a's data files appear.
first_files=$(ls "$dir" | grep -c '\.distcp$')
for _ in $(seq 100); do
  [ -e "$dir/.dcpp.lock" ] && break
  [ "$(ls "$dir" | grep -c '\.distcp$')" -gt "$first_files" ] && break
  sleep 0.1
done
DCPP_SECRET=dir-lock-job-b \
  "$apps/dcpp-launch" --nproc 2 --master-port "$port_b" -- \
  "$apps/dcpp-worker" save "${common[@]}" --seed 3 > "$tmp/out.b" 2>&1 &
pid_b=$!
wait "$pid_b"; rc_b=$?
elapsed_b=$(( $(date +%s) - start ))
wait "$pid_a"; rc_a=$?
echo "--- job a (rc $rc_a)"; cat "$tmp/out.a"
echo "--- job b (rc $rc_b)"; cat "$tmp/out.b"
[ "$rc_a" = 0 ] || fail "job a holds the lock and must commit"
[ "$rc_b" != 0 ] || fail "job b must fail: the directory is in use"
[ "$elapsed_b" -lt 15 ] || fail "job b took ${elapsed_b}s to fail"
grep -q "another save is writing into this checkpoint directory" "$tmp/out.b" \
  || fail "job b must say that the directory is in use"
grep -q "\.dcpp\.lock held by host .* pid [0-9]* since .* save [0-9a-f]*" "$tmp/out.b" \
  || fail "job b must name the holder"
[ ! -e "$dir/.dcpp.lock" ] || fail "job a's commit must release the lock"
echo "job b failed after ${elapsed_b}s naming the holder; job a committed"

# Job a's checkpoint is whole: it loads and verifies on 3 ranks.
DCPP_SECRET=dir-lock-load "$apps/dcpp-launch" --nproc 3 -- \
  "$apps/dcpp-worker" load "${common[@]}" --seed 2 --verify \
  || fail "job a's checkpoint must load and verify"
"$apps/dcpp" verify "$dir" || fail "dcpp verify must pass"

# The lock is free again: another save commits.
DCPP_SECRET=dir-lock-again "$apps/dcpp-launch" --nproc 2 -- \
  "$apps/dcpp-worker" save "${common[@]}" --seed 4 \
  || fail "a save after both jobs must succeed"
DCPP_SECRET=dir-lock-again "$apps/dcpp-launch" --nproc 1 -- \
  "$apps/dcpp-worker" load "${common[@]}" --seed 4 --verify \
  || fail "the new checkpoint must load and verify"
echo "PASSED"
