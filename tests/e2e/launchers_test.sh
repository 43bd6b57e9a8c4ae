#!/usr/bin/env bash
# dcpp-worker under the real launchers, unchanged: each case saves on some
# ranks and loads with --verify on others, started the way users start them.
#
#   launchers_test.sh BIN_DIR SCRATCH CASE
#
# Cases:
#   torchrun_static      Debian's torchrun, default (static) rendezvous: its
#                        c10d store holds MASTER_PORT, the coordinator
#                        publishes a free port in that store
#   torchrun_standalone  torchrun --standalone: MASTER_ADDR is a host name
#                        (localhost), MASTER_PORT is free
#   torchrun_no_secret   under torchrun without DCPP_SECRET the ranks refuse
#                        to start, saying to set it or pass --insecure
#   store_refused        torchrun's variables (TORCHELASTIC_USE_AGENT_STORE=
#                        True) but no store on MASTER_PORT: every rank fails
#                        at once, naming the store and the request
#   mpirun               Open MPI's mpirun, 3 ranks; the endpoint comes from
#                        DCPP_MASTER_ADDR / DCPP_MASTER_PORT passed with -x
#   dcpp_launch_spelling dcpp-launch with torchrun's option spellings and
#                        the command without `--`; --nnodes 2 as two
#                        dcpp-launch processes (--node-rank 0 and 1)
#   slurm_env            ranks started with the variables srun sets;
#                        MASTER_ADDR=localhost, then this host's name, then
#                        no MASTER_ADDR (the first host of SLURM_STEP_NODELIST)
#   slurm_netns          two "nodes" (network namespaces joined by a veth
#                        pair, node names in each one's /etc/hosts): rank 0
#                        on node 0, ranks 1 and 2 on node 1; the coordinator's
#                        host comes from SLURM_STEP_NODELIST as a name
# A case whose launcher is missing says why and exits 77 (skip).
set -u

bin=$1
scratch=$2
case_name=$3

worker=$bin/dcpp-worker

source "$(dirname "$0")/case_log.sh"

skip() {
  echo "SKIP ($case_name): $*"
  exit 77
}

# The system Python: `python3` on PATH may be another one (pyenv).
py=/usr/bin/python3

free_port() {
  $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

count() { # count PATTERN: matching lines in the log
  grep -c "$1" "$log"
}

# Worker arguments of a phase: save, or load with --verify.
args_of() {
  if [ "$1" = save ]; then
    echo save --dir "$scratch/ckpt" --size-mb 2 --layout mixed --seed 3 \
      --step-timeout 60
  else
    echo load --dir "$scratch/ckpt" --size-mb 2 --layout mixed --seed 3 \
      --step-timeout 60 --verify
  fi
}

expect_ok() { # expect_ok PHASE N WHAT
  [ "$(count "$1 ok")" = "$2" ] || fail "expected $2 '$1 ok' lines ($3)"
  cat "$log" >>"$log.done"
  : >"$log"
}

export DCPP_SECRET=launchers-test-secret-$$

case "$case_name" in
torchrun_static | torchrun_standalone | torchrun_no_secret)
  [ -x /usr/bin/torchrun ] || skip "no /usr/bin/torchrun (Debian python3-torch)"
  $py -c 'import torch.distributed.run' 2>/dev/null ||
    skip "$py cannot import torch.distributed.run"
  # Debian's torchrun 1.13 crashes on Python 3.11 before starting anything;
  # scripts/torchrun113/sitecustomize.py (what the README tells users to put
  # on torchrun's PYTHONPATH) fixes it. The workers are not Python.
  shim=$(cd "$(dirname "$0")/../../scripts/torchrun113" && pwd)
  torchrun() {
    PYTHONPATH=$shim timeout -k 5 100 $py /usr/bin/torchrun \
      --monitor_interval 1 "$@" >>"$log" 2>&1
  }
  case "$case_name" in
  torchrun_static)
    for phase in save load; do
      n=2
      [ $phase = load ] && n=3
      port=$(free_port)
      # shellcheck disable=SC2046
      torchrun --nnodes 1 --nproc_per_node $n --master_port "$port" \
        --no_python "$worker" $(args_of $phase) ||
        fail "$phase on $n ranks under torchrun (store on port $port)"
      expect_ok $phase $n "torchrun static"
    done
    ;;
  torchrun_standalone)
    for phase in save load; do
      n=3
      [ $phase = load ] && n=2
      # shellcheck disable=SC2046,SC2016
      torchrun --standalone --nproc_per_node $n --no_python \
        sh -c 'echo "rank $RANK: MASTER_ADDR=$MASTER_ADDR"; exec "$0" "$@"' \
        "$worker" $(args_of $phase) ||
        fail "$phase on $n ranks under torchrun --standalone"
      grep -q "rank 0: MASTER_ADDR=[0-9]" "$log" &&
        echo "note: torchrun gave a numeric MASTER_ADDR here"
      expect_ok $phase $n "torchrun --standalone"
    done
    ;;
  torchrun_no_secret)
    unset DCPP_SECRET
    port=$(free_port)
    # shellcheck disable=SC2046
    torchrun --nnodes 1 --nproc_per_node 2 --master_port "$port" \
      --no_python "$worker" $(args_of save) &&
      fail "ranks without a secret did not refuse"
    grep -q "no DCPP_SECRET.*--insecure" "$log" ||
      fail "no line saying to set DCPP_SECRET or pass --insecure"
    [ -f "$scratch/ckpt/.metadata" ] && fail "a checkpoint was committed"
    ;;
  esac
  ;;
store_refused)
  port=$(free_port)
  pids=()
  start=$(date +%s%N)
  for r in 0 1; do
    # shellcheck disable=SC2046
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 \
      MASTER_PORT="$port" TORCHELASTIC_USE_AGENT_STORE=True \
      TORCHELASTIC_RUN_ID=refused-$$ timeout -k 5 60 "$worker" \
      $(args_of save) >>"$log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do
    wait "$p" && fail "a rank without torchrun's store succeeded"
  done
  took_ms=$((($(date +%s%N) - start) / 1000000))
  [ "$took_ms" -lt 15000 ] || fail "the ranks took $took_ms ms to fail"
  want="failed in step connect: dcpp::io_error: torchrun's store at 127.0.0.1:$port: connect: Connection refused"
  [ "$(grep -cF "$want" "$log")" = 2 ] || fail "expected 2 lines '$want'"
  echo "both ranks failed in $took_ms ms"
  ;;
mpirun)
  command -v mpirun >/dev/null || skip "no mpirun (Debian openmpi-bin)"
  for phase in save load; do
    n=3
    [ $phase = load ] && n=2
    port=$(free_port)
    # shellcheck disable=SC2046
    DCPP_MASTER_ADDR=127.0.0.1 DCPP_MASTER_PORT=$port timeout -k 5 100 \
      mpirun --allow-run-as-root --oversubscribe -np $n \
      -x DCPP_SECRET -x DCPP_MASTER_ADDR -x DCPP_MASTER_PORT \
      "$worker" $(args_of $phase) >>"$log" 2>&1 ||
      fail "$phase on $n ranks under mpirun"
    expect_ok $phase $n "mpirun"
  done
  ;;
dcpp_launch_spelling)
  launch=$bin/dcpp-launch
  port=$(free_port)
  # shellcheck disable=SC2046
  timeout -k 5 90 "$launch" --nproc_per_node 2 --master_addr localhost \
    --master-port "$port" "$worker" $(args_of save) >>"$log" 2>&1 ||
    fail "save under dcpp-launch --nproc_per_node 2 (no --)"
  expect_ok save 2 "dcpp-launch, torchrun spelling"
  # Two "hosts": ranks 0-1 and 2-3 of 4, one dcpp-launch each.
  export DCPP_JOB_ID=launchers-test-job-$$
  port=$(free_port)
  pids=()
  for node in 0 1; do
    # shellcheck disable=SC2046
    timeout -k 5 90 "$launch" --nnodes 2 --node-rank $node \
      --nproc-per-node 2 --master-addr "$(hostname)" --master_port "$port" \
      "$worker" $(args_of load) >>"$log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[0]}" || fail "load, node 0 of --nnodes 2"
  wait "${pids[1]}" || fail "load, node 1 of --nnodes 2"
  grep -q "rank 3/4: load ok" "$log" || fail "no rank 3/4"
  expect_ok load 4 "dcpp-launch --nnodes 2"
  unset DCPP_JOB_ID
  timeout 10 "$launch" --nnodes 2 --nproc 1 true >>"$log" 2>&1 &&
    fail "--nnodes 2 without DCPP_JOB_ID was accepted"
  grep -q "set DCPP_JOB_ID to the same value" "$log" ||
    fail "no line asking for DCPP_JOB_ID"
  ;;
slurm_env)
  # What srun sets for task R of N on one node (SLURM_JOB_ID and
  # SLURM_STEP_ID make the job id), plus MASTER_ADDR as a host name, the
  # way SLURM recipes set it.
  host=$(hostname)
  srun_like() { # srun_like N MASTER_ADDR PHASE
    local n=$1 addr=$2 phase=$3 pids=() r rc=0 port
    port=$(free_port)
    for ((r = 0; r < n; r++)); do
      # shellcheck disable=SC2046
      env -u RANK -u WORLD_SIZE SLURM_PROCID="$r" SLURM_NTASKS="$n" \
        SLURM_LOCALID="$r" SLURM_JOB_ID=4242 SLURM_STEP_ID="$n" \
        SLURM_NODELIST="$host" SLURM_STEP_NODELIST="$host" \
        SLURM_LAUNCH_NODE_IPADDR=127.0.0.1 MASTER_PORT="$port" \
        ${addr:+MASTER_ADDR=$addr} \
        timeout -k 5 90 "$worker" $(args_of "$phase") >>"$log" 2>&1 &
      pids+=($!)
    done
    for r in "${!pids[@]}"; do
      wait "${pids[$r]}" || rc=1
    done
    return $rc
  }
  for addr in localhost "$host" ""; do
    srun_like 3 "$addr" save || fail "save, MASTER_ADDR='$addr'"
    expect_ok save 3 "MASTER_ADDR='$addr'"
    srun_like 2 "$addr" load || fail "load, MASTER_ADDR='$addr'"
    expect_ok load 2 "MASTER_ADDR='$addr'"
  done
  ;;
slurm_netns)
  if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
    skip "needs root and iproute2 for network namespaces"
  fi
  ns0=dcpp_n0_$$
  ns1=dcpp_n1_$$
  name0=dcppnode$$-0
  name1=dcppnode$$-1
  net=10.214.$(($$ % 250)).
  cleanup() {
    ip netns del "$ns0" 2>/dev/null
    ip netns del "$ns1" 2>/dev/null
    rm -rf "/etc/netns/$ns0" "/etc/netns/$ns1"
  }
  trap cleanup EXIT
  if ! { ip netns add "$ns0" && ip netns add "$ns1" &&
    ip link add "v0_$$" netns "$ns0" type veth peer name "v1_$$" \
      netns "$ns1" &&
    ip -n "$ns0" addr add "${net}1/30" dev "v0_$$" &&
    ip -n "$ns1" addr add "${net}2/30" dev "v1_$$" &&
    ip -n "$ns0" link set "v0_$$" up && ip -n "$ns1" link set "v1_$$" up &&
    ip -n "$ns0" link set lo up && ip -n "$ns1" link set lo up; } \
    >>"$log" 2>&1; then
    cat "$log"
    skip "cannot create two network namespaces joined by a veth pair"
  fi
  # `ip netns exec NS` mounts /etc/netns/NS/hosts over /etc/hosts: each
  # node resolves both node names, as on a cluster.
  for ns in "$ns0" "$ns1"; do
    mkdir -p "/etc/netns/$ns"
    printf '127.0.0.1 localhost\n%s %s\n%s %s\n' "${net}1" "$name0" \
      "${net}2" "$name1" >"/etc/netns/$ns/hosts"
  done
  port=$(free_port)
  for phase in save load; do
    n=3
    pids=()
    for ((r = 0; r < n; r++)); do
      ns=$ns1
      node=$name1
      [ $r = 0 ] && ns=$ns0 && node=$name0
      # shellcheck disable=SC2046
      ip netns exec "$ns" env -u RANK -u WORLD_SIZE -u MASTER_ADDR \
        SLURM_PROCID=$r SLURM_NTASKS=$n SLURM_LOCALID=$((r == 0 ? 0 : r - 1)) \
        SLURM_JOB_ID=4343 SLURM_STEP_ID=0 SLURMD_NODENAME="$node" \
        SLURM_NODELIST="dcppnode$$-[0-1]" \
        SLURM_STEP_NODELIST="dcppnode$$-[0-1]" SLURM_LAUNCH_NODE_IPADDR=192.0.2.1 \
        MASTER_PORT="$port" \
        timeout -k 5 90 "$worker" $(args_of $phase) >>"$log" 2>&1 &
      pids+=($!)
    done
    rc=0
    for r in "${!pids[@]}"; do
      wait "${pids[$r]}" || rc=1
    done
    [ $rc = 0 ] || fail "$phase on 3 ranks across two namespaces"
    expect_ok $phase 3 "netns"
  done
  ;;
*)
  echo "unknown case $case_name"
  exit 2
  ;;
esac
echo "PASS ($case_name)"
cat "$log.done" 2>/dev/null
cat "$log"
exit 0
