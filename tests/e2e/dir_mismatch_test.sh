#!/usr/bin/env bash
# Ranks of one save given different --dir (issue 11): the save fails in step
# plan naming the rank, before anything is written or deleted; the previous
# checkpoint in the coordinator's directory stays loadable. Ranks of one
# load that read different checkpoints fail in step plan too.
#   dir_mismatch_test.sh BUILD_APPS_DIR
set -uo pipefail
apps="$1"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
fail() { echo "FAILED: $*"; exit 1; }
common=(--size-mb 2 --layout row --step-timeout 30)
"$apps/dcpp-launch" --nproc 2 -- "$apps/dcpp-worker" save --dir "$tmp/a" \
  "${common[@]}" --seed 1 > "$tmp/out.first" 2>&1 \
  || fail "the first save: $(cat "$tmp/out.first")"
md=$(sha256sum < "$tmp/a/.metadata")
files=$(ls "$tmp/a" | sort)
# Rank 1 writes to b, rank 0 to a.
"$apps/dcpp-launch" --nproc 2 -- bash -c \
  'dir='"$tmp"'/a; [ "$RANK" = 1 ] && dir='"$tmp"'/b; exec "$0" save --dir "$dir" "$@"' \
  "$apps/dcpp-worker" "${common[@]}" --seed 2 > "$tmp/out" 2>&1 \
  && fail "ranks with different directories saved: $(cat "$tmp/out")"
grep -q "failed in step plan" "$tmp/out" || fail "not a plan failure: $(cat "$tmp/out")"
grep -q "rank(s) 1 do not write into the coordinator's checkpoint directory" "$tmp/out" \
  || fail "rank 1 not named: $(cat "$tmp/out")"
[ "$(sha256sum < "$tmp/a/.metadata")" = "$md" ] || fail ".metadata of a changed"
[ "$(ls "$tmp/a" | sort)" = "$files" ] || fail "files of a changed: $(ls -a "$tmp/a")"
[ -z "$(ls "$tmp/b" 2>/dev/null | grep distcp)" ] || fail "b got data files"
"$apps/dcpp-launch" --nproc 3 -- "$apps/dcpp-worker" load --dir "$tmp/a" \
  "${common[@]}" --seed 1 --verify > "$tmp/out.load" 2>&1 \
  || fail "the first checkpoint no longer loads: $(cat "$tmp/out.load")"
# A load whose ranks read different checkpoints (b: another save) fails in
# step plan naming the ranks of each, instead of loading mixed data.
"$apps/dcpp-launch" --nproc 2 -- "$apps/dcpp-worker" save --dir "$tmp/b" \
  "${common[@]}" --seed 2 > "$tmp/out.b" 2>&1 || fail "save into b: $(cat "$tmp/out.b")"
"$apps/dcpp-launch" --nproc 2 -- bash -c \
  'dir='"$tmp"'/a; [ "$RANK" = 1 ] && dir='"$tmp"'/b; exec "$0" load --dir "$dir" "$@"' \
  "$apps/dcpp-worker" "${common[@]}" --seed 1 > "$tmp/out.mixed" 2>&1 \
  && fail "a load of two checkpoints succeeded: $(cat "$tmp/out.mixed")"
grep -q "read different checkpoints: rank(s) .* read the checkpoint whose .metadata is xxh64:" "$tmp/out.mixed" \
  || fail "the mixed load does not name the checkpoints: $(cat "$tmp/out.mixed")"
echo "dir_mismatch_test: rank 1's other directory fails step plan; a is intact and loads; a mixed load fails"
