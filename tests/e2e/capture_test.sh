#!/usr/bin/env bash
# What crosses the wire (issue 11), with real processes and a real capture:
# 1. A loopback capture (tcpdump -i lo -A) of a 2-rank save with a
#    DCPP_SECRET holds neither the secret, nor the job id, nor a plan (the
#    state dict's key names). The same save with --insecure and no secret
#    does show the key names: the capture and the grep can see a plan.
# 2. A squatter that binds MASTER_PORT first and answers like a ZeroMQ
#    CURVE server without the key learns nothing: the rank fails with
#    `unauthorized` and the bytes it received hold no secret, job id, hello
#    or plan.
# 3. A process without a secret and without --insecure refuses to start.
#   capture_test.sh BUILD_APPS_DIR
set -uo pipefail
apps="$1"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
fail() { echo "FAILED: $*"; exit 1; }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
secret="capture-secret-$RANDOM$RANDOM-must-not-leak"
job="capture-job-$RANDOM$RANDOM"
# A key name of every synthetic state dict (apps/synthetic.cpp); plans and
# metadata carry the fully qualified names.
plan_word="position_ids"

# -- 3. no secret, no --insecure: refused before anything is bound ----------
port=$(free_port)
RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
  timeout -k 5 30 "$apps/dcpp-worker" save --dir "$tmp/none" --size-mb 1 \
  > "$tmp/nosecret.out" 2>&1 && fail "a rank without a secret started"
grep -q "unauthorized.*no DCPP_SECRET.*--insecure" "$tmp/nosecret.out" \
  || fail "the refusal does not say what to do: $(cat "$tmp/nosecret.out")"
echo "without a secret: $(grep -o 'no DCPP_SECRET[^;]*' "$tmp/nosecret.out" | head -1)"

# -- 2. a squatter on MASTER_PORT -------------------------------------------
port=$(free_port)
python3 - "$port" "$tmp/squatter.bin" > "$tmp/squatter.out" 2>&1 <<'PY' &
import socket, sys, time
port, out = int(sys.argv[1]), sys.argv[2]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(16)
srv.settimeout(30)
got = b""
conns = 0
deadline = time.time() + 25
# Answer every connection with a ZMTP 3.0 greeting that offers CURVE as a
# server, so the rank goes on to its CURVE HELLO: everything a rank sends
# before it knows who it talks to.
greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0])
greeting += b"CURVE".ljust(20, b"\x00") + b"\x01" + b"\x00" * 31
while time.time() < deadline:
    try:
        c, _ = srv.accept()
    except socket.timeout:
        break
    conns += 1
    c.settimeout(2)
    c.sendall(greeting)
    try:
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            got += chunk
            with open(out, "ab") as f:  # as it comes: the test kills us
                f.write(chunk)
            print("squatter: %d connections, %d bytes received"
                  % (conns, len(got)), flush=True)
            if len(got) > 200:
                # A garbage WELCOME: the rank cannot authenticate it.
                c.sendall(bytes([0x04, 0xa8]) + b"\x07WELCOME" + b"\x00" * 160)
    except (socket.timeout, ConnectionResetError):
        pass
    c.close()
PY
squatter=$!
sleep 0.5
start=$SECONDS
RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
  DCPP_SECRET=$secret DCPP_JOB_ID=$job \
  timeout -k 5 60 "$apps/dcpp-worker" save --dir "$tmp/squat" --size-mb 1 \
  > "$tmp/rank.out" 2>&1 && fail "the rank accepted the squatter: $(cat "$tmp/rank.out")"
took=$((SECONDS - start))
kill "$squatter" 2>/dev/null
wait "$squatter" 2>/dev/null
grep -q "unauthorized" "$tmp/rank.out" \
  || fail "the rank's error is not unauthorized: $(cat "$tmp/rank.out")"
[ "$took" -lt 40 ] || fail "the rank took $took s to give up"
[ -s "$tmp/squatter.bin" ] || fail "the squatter received nothing: the rank never tried"
for word in "$secret" "$job" dcpp-zmq "$plan_word"; do
  grep -aq -- "$word" "$tmp/squatter.bin" && fail "the squatter received '$word'"
done
echo "$(tail -1 "$tmp/squatter.out"); the rank gave up in $took s: $(grep -o 'failed: [^;]*' "$tmp/rank.out" | head -1)"

# -- 1. a loopback capture of a save ----------------------------------------
if ! command -v tcpdump > /dev/null; then
  echo "SKIPPED: tcpdump is not installed (scripts/install-deps.sh installs it)"
  exit 77
fi
capture() { # capture NAME PORT -> starts tcpdump into $tmp/NAME.txt
  # A 16 MiB buffer: on a loaded machine the kernel must not drop packets.
  tcpdump -i lo -A -U -n -s 0 -B 16384 "tcp port $2" > "$tmp/$1.txt" 2> "$tmp/$1.err" &
  cap_pid=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$tmp/$1.err" && return 0
    kill -0 "$cap_pid" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}
# tcpdump may lag behind the packets on a loaded machine, and SIGINT ends
# it without draining its buffer: stop it once its output stops growing.
stop_capture() { # stop_capture NAME
  local last=-1 size
  for _ in $(seq 40); do
    size=$(stat -c %s "$tmp/$1.txt")
    [ "$size" -eq "$last" ] && [ "$size" -gt 0 ] && break
    last=$size
    sleep 0.5
  done
  kill -INT "$cap_pid"; wait "$cap_pid" 2>/dev/null
}
port=$(free_port)
if ! capture secure "$port"; then
  echo "SKIPPED: cannot capture on lo (needs root or CAP_NET_RAW): $(cat "$tmp/secure.err")"
  exit 77
fi
DCPP_SECRET=$secret DCPP_JOB_ID=$job timeout -k 5 120 \
  "$apps/dcpp-launch" --nproc 2 --master-port "$port" -- \
  "$apps/dcpp-worker" save --dir "$tmp/ckpt" --size-mb 2 \
  > "$tmp/save.out" 2>&1 || fail "the save failed: $(cat "$tmp/save.out")"
stop_capture secure
packets=$(grep -c "IP 127.0.0.1" "$tmp/secure.txt")
[ "$packets" -gt 10 ] || fail "the capture holds $packets packets: $(cat "$tmp/secure.err")"
for word in "$secret" "$job" dcpp-zmq "$plan_word"; do
  grep -aq -- "$word" "$tmp/secure.txt" && fail "the capture of a secured save shows '$word'"
done
echo "secured save: $packets packets captured, no secret, job id, hello or plan in them"

# The control: the same save with --insecure shows its plans.
port=$(free_port)
capture insecure "$port" || fail "the second capture did not start"
pids=()
for r in 0 1; do
  env -u DCPP_SECRET RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    timeout -k 5 120 "$apps/dcpp-worker" save --insecure --dir "$tmp/ckpt2" \
    --size-mb 2 > "$tmp/insecure.$r.out" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
stop_capture insecure
[ -f "$tmp/ckpt2/.metadata" ] || fail "the insecure save failed: $(cat "$tmp"/insecure.*.out)"
grep -q "insecure" "$tmp/insecure.0.out" || fail "no warning about --insecure: $(cat "$tmp/insecure.0.out")"
grep -aq -- "$plan_word" "$tmp/insecure.txt" \
  || fail "the control capture shows no plan: the check above could not fail ($(tail -3 "$tmp/insecure.err" | tr '\n' ' '))"
echo "control: the --insecure save shows '$plan_word' in the capture"
echo "capture_test: passed"
