#!/usr/bin/env bash
# Ranks as processes: dcpp-worker over the ZeroMQ transport, started by
# dcpp-launch (or by hand), saving on one process count and loading with
# --verify on another.
#
#   multiprocess_test.sh BIN_DIR SCRATCH CASE ARGS...
#
# Cases:
#   reshard SAVE_N LOAD_N LAYOUT COORD   coordinator in rank COORD (both runs)
#   external SAVE_N LOAD_N LAYOUT        coordinator in a dcpp-coordinator
#   wrong_secret                         one rank is refused: it says
#                                        "unauthorized", the job fails fast
#   wrong_secret_direct                  same without dcpp-launch: the other
#                                        ranks fail by themselves (deadline)
#   coordinator_lost                     the dcpp-coordinator is killed while
#                                        ranks wait: they report rank_lost
#   netns                                the dcpp-coordinator in another
#                                        network namespace, reached over a
#                                        veth pair (skips, 77, without root)
set -u

bin=$1
scratch=$2
case_name=$3
shift 3

worker=$bin/dcpp-worker
coordinator=$bin/dcpp-coordinator
launch=$bin/dcpp-launch

source "$(dirname "$0")/case_log.sh"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# run_launch N ARGS...: dcpp-launch with a hard limit, output into $log.
# Extra dcpp-launch options: $launch_opts (an array).
launch_opts=()
run_launch() {
  local n=$1
  shift
  timeout -k 5 90 "$launch" --nproc "$n" "${launch_opts[@]}" -- "$@" \
    >>"$log" 2>&1
}

ok_lines() { # ok_lines WORD: how many "rank ... WORD ok" lines
  grep -c "$1 ok" "$log"
}

case "$case_name" in
reshard)
  save_n=$1 load_n=$2 layout=$3 coord=$4
  save_coord=$((coord < save_n ? coord : 0))
  load_coord=$((coord < load_n ? coord : 0))
  run_launch "$save_n" "$worker" save --dir "$scratch/ckpt" --size-mb 2 \
    --layout "$layout" --seed 7 --coordinator-rank "$save_coord" \
    --threads 2 --step-timeout 60 || fail "save on $save_n processes"
  [ "$(ok_lines save)" = "$save_n" ] || fail "expected $save_n save lines"
  [ -f "$scratch/ckpt/.metadata" ] || fail "no .metadata"
  run_launch "$load_n" "$worker" load --dir "$scratch/ckpt" --size-mb 2 \
    --layout "$layout" --seed 7 --coordinator-rank "$load_coord" --verify \
    --step-timeout 60 || fail "load on $load_n processes"
  [ "$(ok_lines load)" = "$load_n" ] || fail "expected $load_n load lines"
  ;;
external)
  save_n=$1 load_n=$2 layout=$3
  export DCPP_SECRET=external-test-secret
  export DCPP_JOB_ID=external-test-job
  for phase in save load; do
    n=$save_n
    extra=()
    if [ $phase = load ]; then
      n=$load_n
      extra=(--verify)
    fi
    port=$(free_port)
    timeout -k 5 90 "$coordinator" --port "$port" --world "$n" \
      >>"$log" 2>&1 &
    cpid=$!
    launch_opts=(--master-port "$port")
    DCPP_COORDINATOR=external run_launch "$n" "$worker" $phase --dir "$scratch/ckpt" --size-mb 2 --layout "$layout" \
      "${extra[@]}" --step-timeout 60 ||
      {
        kill "$cpid" 2>/dev/null
        fail "$phase on $n processes"
      }
    wait "$cpid" || fail "dcpp-coordinator exited non-zero ($phase)"
    [ "$(ok_lines $phase)" = "$n" ] || fail "expected $n $phase lines"
  done
  grep -q "every rank disconnected" "$log" || fail "coordinator did not end"
  ;;
wrong_secret)
  start=$SECONDS
  # shellcheck disable=SC2016
  timeout -k 5 90 "$launch" --nproc 3 -- sh -c \
    'if [ "$RANK" = 1 ]; then DCPP_SECRET=not-the-secret; export DCPP_SECRET; fi; exec "$0" "$@"' \
    "$worker" save --dir "$scratch/ckpt" --size-mb 2 --step-timeout 30 \
    >>"$log" 2>&1
  rc=$?
  [ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "expected a failure, got rc $rc"
  grep -q "rank 1/3 failed in step connect: unauthorized" "$log" ||
    grep -q "rank 1/3 failed in step connect:.*unauthorized" "$log" ||
    fail "no unauthorized error line for rank 1"
  [ $((SECONDS - start)) -lt 30 ] || fail "took $((SECONDS - start)) s"
  [ -f "$scratch/ckpt/.metadata" ] && fail "a checkpoint was committed"
  ;;
wrong_secret_direct)
  # No supervisor: ranks 0 and 2 must give up on their own (step deadline).
  port=$(free_port)
  start=$SECONDS
  pids=()
  for r in 0 1 2; do
    secret=good-secret
    [ $r = 1 ] && secret=bad-secret
    RANK=$r WORLD_SIZE=3 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      DCPP_SECRET=$secret timeout -k 5 60 "$worker" save \
      --dir "$scratch/ckpt" --size-mb 2 --step-timeout 5 \
      >>"$log" 2>&1 &
    pids+=($!)
  done
  for i in 0 1 2; do
    wait "${pids[$i]}"
    rc=$?
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $rc -ne 137 ] ||
      fail "rank $i: expected a clean failure, got rc $rc"
  done
  grep -q "rank 1/3 failed in step connect:.*unauthorized" "$log" ||
    fail "no unauthorized error line for rank 1"
  grep -q "rank 0/3 failed in step save" "$log" || fail "rank 0 line"
  grep -q "rank 2/3 failed in step save" "$log" || fail "rank 2 line"
  [ $((SECONDS - start)) -lt 45 ] || fail "took $((SECONDS - start)) s"
  ;;
coordinator_lost)
  # World 3, only two ranks come: they wait in the plan step (deadline
  # 60 s); killing the coordinator must end them through the heartbeat.
  # A 1 ms fault in the plan step makes each rank say when it got there
  # ("dcpp: injected fault: rank R is 1 ms late in step plan"), i.e. past
  # its connect step: the kill waits for both lines.
  export DCPP_SECRET=lost-test-secret
  export DCPP_JOB_ID=lost-test-job
  port=$(free_port)
  "$coordinator" --port "$port" --world 3 >>"$log" 2>&1 &
  cpid=$!
  start=$SECONDS
  pids=()
  for r in 0 1; do
    RANK=$r WORLD_SIZE=3 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      DCPP_COORDINATOR=external timeout -k 5 60 "$worker" save \
      --dir "$scratch/ckpt" --size-mb 2 --step-timeout 60 \
      --peer-timeout-ms 1500 --fault 'plan:slow@*:1' >>"$log" 2>&1 &
    pids+=($!)
  done
  deadline=$((SECONDS + 30))
  until [ "$(grep -c 'ms late in step plan' "$log")" -ge 2 ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill -9 "$cpid" "${pids[@]}" 2>/dev/null
      fail "the ranks did not reach the plan step within 30 s"
    fi
    sleep 0.05
  done
  kill -9 "$cpid"
  for i in 0 1; do
    wait "${pids[$i]}"
    rc=$?
    [ $rc -eq 1 ] || fail "rank $i: expected exit 1, got rc $rc"
  done
  [ $((SECONDS - start)) -lt 30 ] || fail "took $((SECONDS - start)) s"
  [ "$(grep -c 'failed in step save:.*rank_lost' "$log")" = 2 ] ||
    fail "expected two rank_lost lines"
  ;;
netns)
  # "Cross-host": the dcpp-coordinator runs in its own network namespace,
  # reached at its veth address; the ranks run in this one.
  if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
    echo "SKIP: needs root and iproute2"
    exit 77
  fi
  ns=dcpp_mp_$$
  host_if=dcppa$$
  ns_if=dcppb$$
  net=10.213.$(($$ % 250)).
  cleanup() {
    ip netns del "$ns" 2>/dev/null
    ip link del "$host_if" 2>/dev/null
  }
  trap cleanup EXIT
  if ! { ip netns add "$ns" &&
    ip link add "$host_if" type veth peer name "$ns_if" &&
    ip link set "$ns_if" netns "$ns" &&
    ip addr add "${net}1/30" dev "$host_if" &&
    ip link set "$host_if" up &&
    ip netns exec "$ns" ip addr add "${net}2/30" dev "$ns_if" &&
    ip netns exec "$ns" ip link set "$ns_if" up &&
    ip netns exec "$ns" ip link set lo up; } >>"$log" 2>&1; then
    echo "SKIP: cannot create a network namespace with a veth pair"
    cat "$log"
    exit 77
  fi
  export DCPP_SECRET=netns-test-secret
  export DCPP_JOB_ID=netns-test-job
  addr=${net}2
  for phase in save load; do
    n=2
    extra=()
    if [ $phase = load ]; then
      n=3
      extra=(--verify)
    fi
    port=$(free_port)
    timeout -k 5 90 ip netns exec "$ns" "$coordinator" --addr "$addr" \
      --port "$port" --world "$n" >>"$log" 2>&1 &
    cpid=$!
    launch_opts=(--master-port "$port" --master-addr "$addr")
    DCPP_COORDINATOR=external run_launch "$n" "$worker" $phase \
      --dir "$scratch/ckpt" --size-mb 2 --layout mixed "${extra[@]}" \
      --step-timeout 60 ||
      {
        kill "$cpid" 2>/dev/null
        fail "$phase on $n processes via $addr"
      }
    wait "$cpid" || fail "dcpp-coordinator exited non-zero ($phase)"
    [ "$(ok_lines $phase)" = "$n" ] || fail "expected $n $phase lines"
  done
  grep -q "serving 2 ranks on tcp://$addr" "$log" || fail "not bound at $addr"
  ;;
*)
  echo "unknown case $case_name"
  exit 2
  ;;
esac
echo "PASS ($case_name)"
cat "$log"
exit 0
