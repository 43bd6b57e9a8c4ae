#!/usr/bin/env bash
# Two jobs that share a port and a secret must not pair up their ranks
# (issue 11): the coordinator refuses a rank of another job (DCPP_JOB_ID),
# naming both jobs, and the ranks of its own job still save and load.
#   job_id_test.sh BUILD_APPS_DIR
set -uo pipefail
apps="$1"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
fail() { echo "FAILED: $*"; exit 1; }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
export DCPP_SECRET=job-id-test-secret
port=$(free_port)
common=(save --dir "$tmp/ckpt" --size-mb 2 --step-timeout 30)
rank() { # rank JOB R
  RANK=$2 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port DCPP_JOB_ID=$1 \
    timeout -k 5 60 "$apps/dcpp-worker" "${common[@]}"
}

rank job-a 0 > "$tmp/out.a0" 2>&1 &
a0=$!
# Rank 1 of another job (same port, same secret) must be refused.
rank job-b 1 > "$tmp/out.b1" 2>&1 && fail "a rank of job-b joined job-a: $(cat "$tmp/out.b1")"
grep -q "belongs to job 'job-b', this coordinator to job 'job-a'" "$tmp/out.b1" \
  || fail "the refusal does not name both jobs: $(cat "$tmp/out.b1")"
grep -q "unauthorized" "$tmp/out.b1" || fail "not an unauthorized error: $(cat "$tmp/out.b1")"
# Job a's own rank 1 still completes the save with rank 0.
rank job-a 1 > "$tmp/out.a1" 2>&1 || fail "job-a rank 1: $(cat "$tmp/out.a1")"
wait "$a0" || fail "job-a rank 0: $(cat "$tmp/out.a0")"
[ -f "$tmp/ckpt/.metadata" ] || fail "job-a committed nothing"
echo "job_id_test: a rank of another job is refused by name; the job's own ranks commit"
