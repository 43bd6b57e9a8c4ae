#!/usr/bin/env bash
# The job's secret from careless or hostile places, with real processes:
# 1. DCPP_SECRET_FILE naming a FIFO fails at once naming it (it used to
#    block forever, with no message); a sparse 1 GiB file is refused at
#    once naming its size; a file in a directory others may write is
#    refused naming the directory.
# 2. A guessable DCPP_SECRET ("abc") is warned about, once per job, naming
#    the variable; the save still commits. A secret that dcpp-launch draws
#    gives no warning.
#   secret_file_test.sh BUILD_APPS_DIR
set -uo pipefail
apps="$1"
tmp=$(mktemp -d)
chmod 700 "$tmp"
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; chmod -R u+rwx "$tmp"; rm -rf "$tmp"' EXIT
fail() { echo "FAILED: $*"; exit 1; }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# refused FILE TEXT: rank 0 of 2 with DCPP_SECRET_FILE=FILE exits 2 within
# 3 s, naming the file and TEXT, in one line.
refused() {
  local port start rc
  port=$(free_port)
  start=$(date +%s%N)
  env -u DCPP_SECRET RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    DCPP_SECRET_FILE="$1" timeout -k 2 20 "$apps/dcpp-worker" save \
    --dir "$tmp/ck" --size-mb 1 > "$tmp/out" 2>&1
  rc=$?
  local ms=$(( ($(date +%s%N) - start) / 1000000 ))
  [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] || fail "DCPP_SECRET_FILE=$1: hung"
  [ "$rc" -ne 0 ] || fail "DCPP_SECRET_FILE=$1 was accepted"
  [ "$ms" -le 3000 ] || fail "DCPP_SECRET_FILE=$1: refused only after $ms ms"
  grep -qF "DCPP_SECRET_FILE=$1: $2" "$tmp/out" ||
    fail "DCPP_SECRET_FILE=$1: no line naming it and '$2': $(cat "$tmp/out")"
  [ "$(wc -l < "$tmp/out")" -eq 1 ] || fail "more than one line: $(cat "$tmp/out")"
  echo "refused in $ms ms: $(cat "$tmp/out")"
}

mkfifo -m 600 "$tmp/fifo"
refused "$tmp/fifo" "is a FIFO, not a regular file"
truncate -s 1G "$tmp/huge" && chmod 600 "$tmp/huge"
refused "$tmp/huge" "is 1073741824 bytes; a secret file holds one line of at most 4096 bytes"
mkdir -m 777 "$tmp/open"
chmod 777 "$tmp/open" # whatever the umask
printf '%s\n' 0123456789abcdef0123456789abcdef > "$tmp/open/secret"
chmod 600 "$tmp/open/secret"
refused "$tmp/open/secret" "its directory $tmp/open may be written by group or others"

# 2. A short secret: one warning for the job, naming DCPP_SECRET.
DCPP_SECRET=abc "$apps/dcpp-launch" --nproc 2 -- \
  "$apps/dcpp-worker" save --dir "$tmp/weak" --size-mb 1 --step-timeout 30 \
  > "$tmp/weak.out" 2>&1 || fail "the save with a weak secret failed: $(cat "$tmp/weak.out")"
[ -f "$tmp/weak/.metadata" ] || fail "the save with a weak secret committed nothing"
n=$(grep -c "DCPP_SECRET is a weak secret (3 bytes" "$tmp/weak.out")
[ "$n" -eq 1 ] || fail "$n warnings about DCPP_SECRET=abc (1 expected): $(cat "$tmp/weak.out")"
grep -m1 "weak secret" "$tmp/weak.out"
env -u DCPP_SECRET -u DCPP_SECRET_FILE "$apps/dcpp-launch" --nproc 2 -- \
  "$apps/dcpp-worker" save --dir "$tmp/drawn" --size-mb 1 --step-timeout 30 \
  > "$tmp/drawn.out" 2>&1 || fail "the save with a drawn secret failed: $(cat "$tmp/drawn.out")"
grep -q "weak secret" "$tmp/drawn.out" && fail "a drawn secret was called weak: $(cat "$tmp/drawn.out")"
echo "secret_file_test: FIFO, huge file and open directory refused at once; a weak secret warned about once"
