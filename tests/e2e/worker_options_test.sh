#!/usr/bin/env bash
# dcpp-worker's benchmark options: --layout-file (the tensors of a layout
# file, rows split as torch.tensor_split splits them, as PyTorch DCP's
# benchmark shards them), the load's separate allocation time (--json
# alloc_s, the text line's "alloc"), --alloc huge, and the start and end
# times scripts/bench.py turns into the job's time.
#
#   worker_options_test.sh BIN_DIR
set -u

bin=$1
scratch=$(mktemp -d /tmp/dcpp-worker-options.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
log=$scratch/log.txt

fail() {
  echo "FAIL: $*"
  echo "---- output ----"
  cat "$log"
  exit 1
}

launch() { # launch N ARGS...: dcpp-worker ARGS on N rank processes
  local n=$1
  shift
  timeout -k 5 90 "$bin/dcpp-launch" --nproc "$n" -- "$bin/dcpp-worker" "$@" \
    >"$log" 2>&1
}

json_field_count() { # json_field_count FIELD: JSON lines with FIELD, ok true
  grep '^{' "$log" | grep '"ok":true' | grep -c "\"$1\":"
}

# 10 rows over 3 ranks: tensor_split gives 4, 3, 3 rows (offsets 0, 4, 7);
# a ceil-sized chunking would give 4, 4, 2 (offsets 0, 4, 8).
layout=$scratch/layout.json
echo '[["tok_emb.weight", [10, 4]], ["layers.0.bias", [7]]]' >"$layout"
ckpt=$scratch/ckpt

launch 3 save --dir "$ckpt" --layout-file "$layout" --layout row --json -q \
  || fail "save on 3 ranks"
[ "$(json_field_count build_s)" = 3 ] || fail "save: 3 JSON reports with build_s"
[ "$(json_field_count start_unix)" = 3 ] || fail "save: start_unix"
[ "$(json_field_count end_unix)" = 3 ] || fail "save: end_unix"

"$bin/dcpp" inspect "$ckpt" >"$log" 2>&1 || fail "dcpp inspect"
grep -q 'tok_emb.weight' "$log" || fail "inspect: tok_emb.weight"
grep -q 'layers.0.bias' "$log" || fail "inspect: layers.0.bias"
grep -Eq '\[7, 0\]' "$log" || fail "tok_emb.weight: no chunk at row 7 (tensor_split)"
grep -Eq '\[8, 0\]' "$log" && fail "tok_emb.weight: a chunk at row 8 (not tensor_split)"

launch 2 load --dir "$ckpt" --layout-file "$layout" --layout row --verify \
  --json -q || fail "load on 2 ranks with --verify"
[ "$(json_field_count alloc_s)" = 2 ] || fail "load: 2 JSON reports with alloc_s"
[ "$(json_field_count verify_s)" = 2 ] || fail "load: verify_s"
grep -q '"alloc":"torch"' "$log" || fail "load: default --alloc torch"

launch 1 load --dir "$ckpt" --layout-file "$layout" --layout row --verify \
  --alloc huge || fail "load on 1 rank, --alloc huge"
grep -Eq 'load ok: .*alloc [0-9.]+ s, verify' "$log" \
  || fail "text line: alloc and verify times"

# Another layout than the one saved: the load fails, naming the tensor.
echo '[["tok_emb.weight", [11, 4]], ["layers.0.bias", [7]]]' \
  >"$scratch/other.json"
launch 1 load --dir "$ckpt" --layout-file "$scratch/other.json" \
  && fail "load with another shape succeeded"
grep -q 'tok_emb.weight' "$log" || fail "shape mismatch names the tensor"

# A missing or empty layout file is a usage error (exit 2).
launch 1 save --dir "$scratch/x" --layout-file "$scratch/missing.json"
rc=$?
grep -q 'cannot open layout file' "$log" || fail "missing layout file: message"
[ $rc -ne 0 ] || fail "missing layout file: exit 0"
echo '[]' >"$scratch/empty.json"
launch 1 save --dir "$scratch/x" --layout-file "$scratch/empty.json" \
  && fail "empty layout file accepted"
grep -q 'lists no tensors' "$log" || fail "empty layout file: message"

echo "worker options: ok"
