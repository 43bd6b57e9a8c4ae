#!/usr/bin/env bash
# Injected faults in real rank processes (DCPP_FAULT, see
# core/fault.hpp): a rank that dies in the write step, and one whose
# write fails. The surviving ranks must exit non-zero on their own within
# the peer timeout (no launcher kills them), no `.metadata` of the aborted
# save may appear, and the previous checkpoint must still load and verify.
# Last, a flipped bit in a data file fails the load and `dcpp verify`,
# both naming the key.
#   fault_test.sh BUILD_APPS_DIR
set -uo pipefail
apps="$1"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
dir="$tmp/ckpt"
fail() { echo "FAILED: $*"; exit 1; }
export DCPP_SECRET=fault-test-secret
common=(--dir "$dir" --size-mb 2 --layout mixed --step-timeout 20 --peer-timeout-ms 1500)

"$apps/dcpp-launch" --nproc 2 -- "$apps/dcpp-worker" save "${common[@]}" --seed 1 \
  || fail "the first save must succeed"
md_before=$(sha256sum "$dir/.metadata")

# 1. Rank 1 dies (exit 137) after writing its data, before reporting it.
#    Start the ranks by hand so only dcpp's own liveness stops rank 0.
port=$(( 20000 + RANDOM % 20000 ))
start=$(date +%s)
for r in 0 1; do
  RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
  DCPP_FAULT="write:exit@1" \
    "$apps/dcpp-worker" save "${common[@]}" --seed 2 > "$tmp/out.$r" 2>&1 &
  eval "pid$r=\$!"
done
wait "$pid1"; rc1=$?
wait "$pid0"; rc0=$?
elapsed=$(( $(date +%s) - start ))
[ "$rc1" = 137 ] || fail "rank 1 should have died with 137, got $rc1"
[ "$rc0" != 0 ] || fail "rank 0 must fail when rank 1 dies: $(cat "$tmp/out.0")"
[ "$elapsed" -lt 30 ] || fail "rank 0 took ${elapsed}s to notice"
grep -q -E "rank_lost|timeout" "$tmp/out.0" \
  || fail "rank 0 should name the lost rank: $(cat "$tmp/out.0")"
[ "$(sha256sum "$dir/.metadata")" = "$md_before" ] \
  || fail ".metadata changed by an aborted save"
[ ! -e "$dir/.metadata.tmp" ] || fail ".metadata.tmp left by an aborted save"
echo "rank 1 died in write: rank 0 exited $rc0 after ${elapsed}s; old commit intact"

# 2. Rank 0's write fails: every rank fails with the step named.
DCPP_FAULT="write:fail@0" "$apps/dcpp-launch" --nproc 2 -- \
  "$apps/dcpp-worker" save "${common[@]}" --seed 3 > "$tmp/out.fail" 2>&1 \
  && fail "a save with a failing write must fail"
grep -q "injected_fault" "$tmp/out.fail" || fail "no injected_fault: $(cat "$tmp/out.fail")"
[ "$(sha256sum "$dir/.metadata")" = "$md_before" ] || fail ".metadata changed"
echo "rank 0 failed its write: the save failed, old commit intact"

# 3. The previous checkpoint still loads (on 3 ranks) and verifies.
"$apps/dcpp-launch" --nproc 3 -- "$apps/dcpp-worker" load "${common[@]}" --seed 1 --verify \
  || fail "the previous checkpoint must still load and verify"
"$apps/dcpp" verify "$dir" || fail "dcpp verify must pass on the previous checkpoint"

# 4. A new save over it still commits and cleans up the leftovers.
"$apps/dcpp-launch" --nproc 2 -- "$apps/dcpp-worker" save "${common[@]}" --seed 4 \
  || fail "a save after the faults must succeed"
"$apps/dcpp-launch" --nproc 1 -- "$apps/dcpp-worker" load "${common[@]}" --seed 4 --verify \
  || fail "the new checkpoint must load and verify"
# 5. A flipped bit in a data file: the load on every rank count fails naming
#    the key, and `dcpp verify` names it too. Flip the middle byte of the
#    first chunk of model.embedding.weight.
read -r key file pos < <("$apps/dcpp" inspect --json "$dir" | /usr/bin/python3 -c '
import json, sys
items = json.load(sys.stdin)["items"]
c = items["model.embedding.weight"]["chunks"][0]
print("model.embedding.weight", c["file"], c["offset"] + c["length"] // 2)')
cp -a "$dir" "$tmp/flipped"
/usr/bin/python3 - "$tmp/flipped/$file" "$pos" <<'PY'
import sys
path, pos = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(pos); b = f.read(1); f.seek(pos); f.write(bytes([b[0] ^ 0x10]))
PY
"$apps/dcpp-launch" --nproc 2 -- "$apps/dcpp-worker" load --dir "$tmp/flipped" \
  --size-mb 2 --layout mixed --seed 4 --verify > "$tmp/out.flip" 2>&1 \
  && fail "a load of a flipped bit must fail"
grep -q "checksum_mismatch" "$tmp/out.flip" && grep -q "$key" "$tmp/out.flip" \
  || fail "the load must name the checksum mismatch and $key: $(cat "$tmp/out.flip")"
"$apps/dcpp" verify "$tmp/flipped" > "$tmp/out.verify" 2>&1 \
  && fail "dcpp verify must fail on a flipped bit"
grep -q "BROKEN $key" "$tmp/out.verify" \
  || fail "dcpp verify must name $key: $(cat "$tmp/out.verify")"
echo "a flipped bit in $file: load and dcpp verify name $key"
echo "fault_test: all checks passed"
