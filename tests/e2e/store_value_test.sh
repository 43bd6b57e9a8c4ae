#!/usr/bin/env bash
# A value in torchrun's store is written by whoever reaches the store: a
# rank that reads a forged coordinator endpoint there fails with one
# bounded line, the value escaped (no terminal escape, no forged
# "[rank 0] all good" line), and a huge value is refused naming its key and
# size. Real processes: a c10d TCPStore server (store_tool) and dcpp-worker
# as rank 1 under TORCHELASTIC_USE_AGENT_STORE, as torchrun starts it.
#   store_value_test.sh BUILD_APPS_DIR STORE_TOOL
set -uo pipefail
apps="$1"
tool="$2"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
fail() { echo "FAILED: $*"; exit 1; }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
job=store-value-test
key="dcpp/$job/restart-0/group-1/coordinator"

# rank_against VALUE_FILE NAME: rank 1 of 2 reads its endpoint from a store
# holding VALUE_FILE; its stderr goes to $tmp/NAME.err.
rank_against() {
  port=$(free_port)
  "$tool" "$port" "$key" "$1" > "$tmp/$2.store" 2>&1 &
  local store=$!
  for _ in $(seq 100); do
    grep -q ready "$tmp/$2.store" && break
    sleep 0.1
  done
  grep -q ready "$tmp/$2.store" || fail "the store did not start: $(cat "$tmp/$2.store")"
  local start=$SECONDS
  RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    TORCHELASTIC_USE_AGENT_STORE=True DCPP_JOB_ID=$job \
    DCPP_SECRET=0123456789abcdef0123456789abcdef \
    timeout -k 5 60 "$apps/dcpp-worker" save --dir "$tmp/ck-$2" --size-mb 1 \
      --step-timeout 10 > "$tmp/$2.out" 2> "$tmp/$2.err"
  local rc=$?
  kill "$store" 2>/dev/null
  wait "$store" 2>/dev/null
  [ "$rc" -ne 0 ] || fail "$2: rank 1 accepted the value"
  [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] || fail "$2: rank 1 hung"
  [ $((SECONDS - start)) -le 20 ] || fail "$2: rank 1 took $((SECONDS - start)) s"
  [ ! -e "$tmp/ck-$2/.metadata" ] || fail "$2: something was committed"
}

# stderr_bounded NAME MAX_LINES: at most MAX_LINES lines, none over 1024
# bytes, no ESC or other control byte but the newline.
stderr_bounded() {
  local err="$tmp/$1.err" lines longest
  lines=$(wc -l < "$err")
  longest=$(awk '{ if (length($0) > n) n = length($0) } END { print n + 0 }' "$err")
  echo "$1: $lines stderr line(s), the longest $longest bytes"
  [ "$lines" -ge 1 ] && [ "$lines" -le "$2" ] ||
    fail "$1: $lines stderr lines (1 to $2 expected): $(head -c 4000 "$err")"
  [ "$longest" -le 1024 ] || fail "$1: a stderr line of $longest bytes"
  LC_ALL=C grep -q '[[:cntrl:]]' "$err" &&
    fail "$1: a control character reached stderr: $(head -c 2000 "$err" | od -c | head)"
  return 0
}

# 1. Escape sequences and a newline that forges a line of rank 0.
printf '\033[2J\033]0;owned\007tcp://127.0.0.1:1\n[rank 0] all good' > "$tmp/forged"
rank_against "$tmp/forged" forged
stderr_bounded forged 2
grep -q '^\[rank 0\] all good' "$tmp/forged.err" && fail "a forged line reached stderr"
grep -qF "the value under '$key' in torchrun's store at 127.0.0.1:$port is not an endpoint: '\\x1b[2J\\x1b]0;owned\\x07tcp://127.0.0.1:1\\x0a[rank 0] all good' is not a tcp://HOST:PORT endpoint" \
  "$tmp/forged.err" || fail "the value is not quoted escaped: $(cat "$tmp/forged.err")"
grep -q protocol_error "$tmp/forged.err" || fail "not a protocol_error: $(cat "$tmp/forged.err")"
echo "forged: $(cat "$tmp/forged.err")"

# 2. 64 MiB: refused naming the key, the store and the size.
head -c $((64 << 20)) /dev/zero | tr '\0' 'x' > "$tmp/huge"
rank_against "$tmp/huge" huge
stderr_bounded huge 2
grep -qF "no coordinator endpoint under '$key' in torchrun's store at 127.0.0.1:$port: get '$key': the value is 67108864 bytes (at most 4096 accepted)" \
  "$tmp/huge.err" || fail "the refusal does not name key and size: $(head -c 2000 "$tmp/huge.err")"
grep -q too_large "$tmp/huge.err" || fail "not a too_large error: $(head -c 2000 "$tmp/huge.err")"
echo "huge: $(cat "$tmp/huge.err")"
echo "store_value_test: a forged or huge endpoint in the store gives one bounded, escaped line"
