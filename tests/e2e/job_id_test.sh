#!/usr/bin/env bash
# Two jobs that share a port and a secret must not pair up their ranks
# (issue 11), and a handshake of one job must not help with another's keys:
# 1. With a secret, the CURVE keys are salted with the job id
#    (DCPP_JOB_ID): a rank of another job fails the secure handshake with
#    `unauthorized`, naming its own job id, and the ranks of the
#    coordinator's job still save.
# 2. Without a secret (--insecure) the coordinator refuses a rank of
#    another job by its hello, naming both jobs.
#   job_id_test.sh BUILD_APPS_DIR
set -uo pipefail
apps="$1"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
fail() { echo "FAILED: $*"; exit 1; }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
rank() { # rank JOB R [ARGS...]
  local job=$1 r=$2
  shift 2
  RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port DCPP_JOB_ID=$job \
    timeout -k 5 60 "$apps/dcpp-worker" save --dir "$tmp/ckpt-$mode" --size-mb 2 \
    --step-timeout 30 "$@"
}

# two_jobs MODE EXPECTED [ARGS...]: job-a's rank 0 waits; job-b's rank 1
# must fail with `unauthorized` and a line holding EXPECTED; job-a's rank 1
# then completes the save.
two_jobs() {
  mode=$1
  local expected=$2
  shift 2
  port=$(free_port)
  rank job-a 0 "$@" > "$tmp/out.a0.$mode" 2>&1 &
  local a0=$!
  rank job-b 1 "$@" > "$tmp/out.b1.$mode" 2>&1 &&
    fail "$mode: a rank of job-b joined job-a: $(cat "$tmp/out.b1.$mode")"
  grep -qF "$expected" "$tmp/out.b1.$mode" ||
    fail "$mode: the refusal does not say '$expected': $(cat "$tmp/out.b1.$mode")"
  grep -q "unauthorized" "$tmp/out.b1.$mode" ||
    fail "$mode: not an unauthorized error: $(cat "$tmp/out.b1.$mode")"
  echo "$mode: $(grep -m1 unauthorized "$tmp/out.b1.$mode")"
  rank job-a 1 "$@" > "$tmp/out.a1.$mode" 2>&1 ||
    fail "$mode: job-a rank 1: $(cat "$tmp/out.a1.$mode")"
  wait "$a0" || fail "$mode: job-a rank 0: $(cat "$tmp/out.a0.$mode")"
  [ -f "$tmp/ckpt-$mode/.metadata" ] || fail "$mode: job-a committed nothing"
}

DCPP_SECRET=0123456789abcdef0123456789abcdef \
  two_jobs secret "the coordinator holds another DCPP_SECRET or another job id (this rank's is 'job-b'"
unset DCPP_SECRET DCPP_SECRET_FILE
two_jobs insecure "belongs to job 'job-b', this coordinator to job 'job-a'" --insecure
echo "job_id_test: a rank of another job fails the handshake (secret) or is refused by name (insecure); the job's own ranks commit"
