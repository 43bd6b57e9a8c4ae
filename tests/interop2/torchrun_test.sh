#!/usr/bin/env bash
# torchrun of PyTorch 2.6 (in the chroot) launching dcpp-worker on the host
# (/opt/dcpp/host-exec), unchanged: a save on 2 ranks, then a load --verify
# resharded to 3 ranks, with DCPP_SECRET set. The coordinator's endpoint
# goes through torchrun's store, which speaks torch 2.x's protocol.
#
#   torchrun_test.sh DCPP_WORKER SCRATCH CASE
#
# Cases:
#   static      the default (static) rendezvous: torchrun's store listens on
#               --master_port, the workers get MASTER_ADDR=127.0.0.1,
#               MASTER_PORT=that port, TORCHELASTIC_USE_AGENT_STORE=True
#   standalone  --standalone (the c10d rendezvous on a free local port): the
#               workers get MASTER_ADDR=localhost, MASTER_PORT=the
#               rendezvous store's port, TORCHELASTIC_USE_AGENT_STORE=True
# Exits 77 (run.sh) when the chroot is missing.
set -u
worker=$1
scratch=$2
case_name=$3

source "$(dirname "$0")/../e2e/case_log.sh"

export DCPP_SECRET=torchrun2-test-secret-$$
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# Each rank prints what torchrun told it, then becomes dcpp-worker.
# shellcheck disable=SC2016
show_env='echo "rank $RANK: MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT TORCHELASTIC_USE_AGENT_STORE=$TORCHELASTIC_USE_AGENT_STORE"; exec "$0" "$@"'

phase() { # phase save|load N
  local mode=$1 n=$2 launch rc
  case "$case_name" in
  static) launch=(--nnodes 1 --master_port "$port") ;;
  standalone) launch=(--standalone) ;;
  *) echo "unknown case $case_name"; exit 2 ;;
  esac
  local args=(--dir "$scratch/ckpt" --size-mb 2 --layout mixed --seed 3
    --step-timeout 60)
  [ "$mode" = load ] && args+=(--verify)
  timeout -k 5 150 "$DCPP_TORCH2_RUN" --bind "$scratch" --cwd "$scratch" -- \
    torchrun "${launch[@]}" --nproc_per_node "$n" --monitor_interval 1 \
    --no_python /opt/dcpp/host-exec sh -c "$show_env" "$worker" "$mode" \
    "${args[@]}" >>"$log" 2>&1
  rc=$?
  [ $rc = 77 ] && { cat "$log"; exit 77; }
  [ $rc = 0 ] || fail "$mode on $n ranks under torchrun 2.6 ($case_name) exited $rc"
  [ "$(grep -c "$mode ok" "$log")" = "$n" ] ||
    fail "expected $n '$mode ok' lines"
  [ "$(grep -c "TORCHELASTIC_USE_AGENT_STORE=True" "$log")" = "$n" ] ||
    fail "the ranks were not told to use the agent's store"
  case "$case_name" in
  static)
    [ "$(grep -c "MASTER_ADDR=127.0.0.1 MASTER_PORT=$port " "$log")" = "$n" ] ||
      fail "the ranks did not get torchrun's store at 127.0.0.1:$port"
    ;;
  standalone)
    [ "$(grep -c "MASTER_ADDR=localhost MASTER_PORT=[0-9]* " "$log")" = "$n" ] ||
      fail "the ranks did not get MASTER_ADDR=localhost"
    ;;
  esac
  cat "$log" >>"$log.done"
  : >"$log"
}

phase save 2
phase load 3
echo "PASS ($case_name)"
cat "$log.done"
