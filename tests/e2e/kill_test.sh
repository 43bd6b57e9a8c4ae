#!/usr/bin/env bash
# kill -9 of rank processes and of the coordinator at named steps (faults
# from core/fault.hpp make a process stop at the step; the test waits for
# its "dcpp: injected fault: ..." line and then kills it for real):
#
#   1. a worker killed in the write step (write:hang@1, 3 ranks)
#   2. the coordinator's rank killed before the commit (commit:hang@0)
#   3. the coordinator's rank killed during the commit, with `.metadata.tmp`
#      written and fsynced but not renamed (rename:hang@0)
#   4. an external dcpp-coordinator killed while every rank hangs after its
#      write (write:hang@*)
#   5. (no kill) a disk that fills up on rank 1 (io:enospc@1:1)
#   6. a worker stopped with SIGSTOP in the write step (no heartbeats)
#   7. (no kill) a worker stalled in the write step that still heartbeats:
#      only the step deadline (2 s here) can end the save
#
# The ranks are started by hand, without a launcher, so only dcpp's own
# liveness (ZeroMQ heartbeats, --peer-timeout-ms 1500; the step deadline is
# 20 s, far away) can stop the survivors: each must exit non-zero within
# $bound seconds of the kill and say why. After each scenario `.metadata` is
# byte-identical to the one of the first save, that checkpoint loads on
# another rank count with --verify and `dcpp verify` accepts it. At the end
# a fresh save over the same directory commits, leaves only its own data
# files, and loads.
#
#   kill_test.sh BUILD_APPS_DIR
set -uo pipefail
apps="$1"
worker="$apps/dcpp-worker"
coordinator="$apps/dcpp-coordinator"
launch="$apps/dcpp-launch"
cli="$apps/dcpp"

tmp=$(mktemp -d)
cleanup() {
  local p
  for p in $(jobs -p); do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 143' TERM INT
dir="$tmp/ckpt"
bound=10 # seconds from the kill to the exit of the last survivor
export DCPP_SECRET=kill-test-secret
export DCPP_JOB_ID=kill-test-job
common=(--dir "$dir" --size-mb 2 --layout mixed --step-timeout 20
        --peer-timeout-ms 1500)

scenario=setup
fail() {
  echo "FAILED ($scenario): $*"
  local f
  for f in "$tmp"/out.*; do
    [ -e "$f" ] || continue
    echo "---- ${f##*/} ----"
    cat "$f"
  done
  exit 1
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
less_than() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $(( 20000 + RANDOM % 20000 ))
}

# exited PID: true once the child PID has ended (gone or a zombie).
exited() {
  local state
  [ -r "/proc/$1/stat" ] || return 0
  read -r _ _ state _ < "/proc/$1/stat" 2>/dev/null || return 0
  [ "$state" = Z ]
}

# wait_line FILE REGEX SECONDS: until FILE has a line matching REGEX.
wait_line() {
  local deadline
  deadline=$(awk -v t="$(now)" -v s="$3" 'BEGIN { printf "%.3f", t + s }')
  until grep -q -E "$2" "$1" 2>/dev/null; do
    less_than "$(now)" "$deadline" || return 1
    sleep 0.05
  done
}

# start_rank R WORLD PORT ARGS...: rank R of a save in the background; its
# pid in pid[R], its output in $tmp/out.R.
declare -a pid
start_rank() {
  local r=$1 world=$2 port=$3
  shift 3
  RANK=$r WORLD_SIZE=$world MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "$worker" save "${common[@]}" "$@" > "$tmp/out.$r" 2>&1 &
  pid[r]=$!
}

# await_survivors T_KILL NAME:PID...: every listed process must exit
# non-zero within $bound s of T_KILL. Sets $detect to the seconds from the
# kill to the last exit.
await_survivors() {
  local t_kill=$1 item name p rc t_end
  shift
  local deadline
  deadline=$(awk -v t="$t_kill" -v s="$bound" 'BEGIN { printf "%.3f", t + s }')
  local pending=("$@")
  detect=0
  while [ ${#pending[@]} -gt 0 ]; do
    local still=()
    for item in "${pending[@]}"; do
      name=${item%%:*} p=${item##*:}
      if exited "$p"; then
        t_end=$(now)
        wait "$p"; rc=$?
        [ "$rc" != 0 ] || fail "$name exited 0 although a peer was killed"
        [ "$rc" != 137 ] || fail "$name died with 137 instead of failing"
        detect=$(elapsed "$t_kill" "$t_end")
        echo "  $name exited $rc after ${detect}s:" \
          "$(grep -m1 'failed in step' "$tmp/out.${name#rank}" 2>/dev/null)"
      else
        still+=("$item")
      fi
    done
    pending=("${still[@]+"${still[@]}"}")
    [ ${#pending[@]} -eq 0 ] && break
    less_than "$(now)" "$deadline" \
      || fail "still running ${bound}s after the kill: ${pending[*]}"
    sleep 0.05
  done
}

# kill9 NAME PID: kill -9, reap, check that it died of the signal.
kill9() {
  kill -9 "$2" || fail "cannot kill $1 (pid $2): it exited before the kill"
  local rc
  { wait "$2"; rc=$?; } 2>/dev/null # no "Killed" line from bash
  [ "$rc" = 137 ] || fail "$1 should have died of SIGKILL (137), got $rc"
}

metadata_sum() { sha256sum < "$dir/.metadata" | cut -d' ' -f1; }
data_files() { find "$dir" -maxdepth 1 -name '__*.distcp' | wc -l; }

# The checkpoint of the first save must be untouched and still load.
check_old_commit() {
  [ -f "$dir/.metadata" ] || fail ".metadata is gone"
  [ "$(metadata_sum)" = "$md_before" ] || fail ".metadata changed"
  timeout -k 5 60 "$launch" --nproc 3 -- "$worker" load "${common[@]}" \
    --seed 1 --verify > "$tmp/out.load" 2>&1 \
    || fail "the previous checkpoint must load on 3 ranks and verify"
  rm -f "$tmp/out.load"
  "$cli" verify "$dir" > "$tmp/out.verify" 2>&1 \
    || fail "dcpp verify must accept the previous checkpoint"
  rm -f "$tmp/out.verify"
}

reset_outputs() { rm -f "$tmp"/out.*; }

# -- the checkpoint that every scenario must leave intact ---------------------
timeout -k 5 60 "$launch" --nproc 2 -- "$worker" save "${common[@]}" --seed 1 \
  > "$tmp/out.first" 2>&1 || fail "the first save must succeed"
md_before=$(metadata_sum)
clean_files=$(data_files)
[ "$clean_files" -ge 1 ] || fail "no data files after the first save"
reset_outputs
echo "first save (2 ranks, seed 1): .metadata $md_before, $clean_files data files"


# -- 1. a worker killed -9 in the write step ----------------------------------
scenario=worker_in_write
reset_outputs
port=$(free_port)
for r in 0 1 2; do start_rank $r 3 "$port" --seed 2 --fault 'write:hang@1'; done
wait_line "$tmp/out.1" "rank 1 hangs in step write" 30 \
  || fail "rank 1 never reached its hang in the write step"
t_kill=$(now)
kill9 "rank 1" "${pid[1]}"
await_survivors "$t_kill" "rank0:${pid[0]}" "rank2:${pid[2]}"
for r in 0 2; do
  grep -q -E 'rank_lost|timeout' "$tmp/out.$r" \
    || fail "rank $r does not say rank_lost or timeout"
  grep -q -E 'rank 1\b' "$tmp/out.$r" || fail "rank $r does not name rank 1"
done
check_old_commit
echo "scenario 1 (kill -9 worker rank 1 in write, 3 ranks): survivors exited after ${detect}s; old commit intact"

# -- 2. the coordinator's rank killed -9 before the commit --------------------
scenario=coordinator_before_commit
reset_outputs
port=$(free_port)
for r in 0 1 2; do start_rank $r 3 "$port" --seed 2 --fault 'commit:hang@0'; done
wait_line "$tmp/out.0" "rank 0 hangs in step commit" 30 \
  || fail "rank 0 never reached its hang in the commit step"
t_kill=$(now)
kill9 "rank 0 (coordinator)" "${pid[0]}"
await_survivors "$t_kill" "rank1:${pid[1]}" "rank2:${pid[2]}"
for r in 1 2; do
  grep -q -E 'rank_lost|timeout' "$tmp/out.$r" \
    || fail "rank $r does not say rank_lost or timeout"
  grep -q -E 'coordinator|rank 0\b' "$tmp/out.$r" \
    || fail "rank $r does not name the lost coordinator (rank 0)"
done
[ ! -e "$dir/.metadata.tmp" ] || fail ".metadata.tmp written before the commit step"
check_old_commit
echo "scenario 2 (kill -9 coordinator rank 0 before the commit): survivors exited after ${detect}s; old commit intact"

# -- 3. the coordinator's rank killed -9 during the commit --------------------
scenario=coordinator_during_commit
reset_outputs
port=$(free_port)
for r in 0 1; do start_rank $r 2 "$port" --seed 3 --fault 'rename:hang@0'; done
wait_line "$tmp/out.0" "rank 0 hangs in step rename" 30 \
  || fail "rank 0 never reached its hang before the rename"
[ -f "$dir/.metadata.tmp" ] || fail "no .metadata.tmp at the rename hang"
[ "$(metadata_sum)" = "$md_before" ] || fail ".metadata changed before the rename"
t_kill=$(now)
kill9 "rank 0 (coordinator)" "${pid[0]}"
await_survivors "$t_kill" "rank1:${pid[1]}"
grep -q -E 'rank_lost|timeout' "$tmp/out.1" \
  || fail "rank 1 does not say rank_lost or timeout"
grep -q -E 'coordinator|rank 0\b' "$tmp/out.1" \
  || fail "rank 1 does not name the lost coordinator (rank 0)"
check_old_commit
echo "scenario 3 (kill -9 coordinator rank 0 between .metadata.tmp and rename): survivor exited after ${detect}s; .metadata.tmp left, old commit intact"

# -- 4. an external dcpp-coordinator killed -9 while the ranks hang -----------
scenario=external_coordinator
reset_outputs
port=$(free_port)
"$coordinator" --port "$port" --world 2 --peer-timeout-ms 1500 \
  > "$tmp/out.coordinator" 2>&1 &
cpid=$!
wait_line "$tmp/out.coordinator" "serving 2 ranks" 30 \
  || fail "dcpp-coordinator did not start"
for r in 0 1; do
  start_rank $r 2 "$port" --seed 4 --external-coordinator --fault 'write:hang@*'
done
wait_line "$tmp/out.0" "rank 0 hangs in step write" 30 \
  || fail "rank 0 never reached its hang in the write step"
wait_line "$tmp/out.1" "rank 1 hangs in step write" 30 \
  || fail "rank 1 never reached its hang in the write step"
t_kill=$(now)
kill9 "dcpp-coordinator" "$cpid"
await_survivors "$t_kill" "rank0:${pid[0]}" "rank1:${pid[1]}"
for r in 0 1; do
  grep -q -E 'rank_lost|timeout' "$tmp/out.$r" \
    || fail "rank $r does not say rank_lost or timeout"
done
check_old_commit
echo "scenario 4 (kill -9 external dcpp-coordinator, both ranks hung after write): ranks exited after ${detect}s; old commit intact"

# -- 5. a disk that fills up on rank 1 ----------------------------------------
scenario=enospc
reset_outputs
files_before=$(data_files)
timeout -k 5 60 "$launch" --nproc 2 -- "$worker" save "${common[@]}" --seed 6 \
  --fault 'io:enospc@1:1' > "$tmp/out.enospc" 2>&1 \
  && fail "a save on a full disk must fail"
grep -q "No space left on device" "$tmp/out.enospc" \
  || fail "the failure does not say 'No space left on device'"
[ "$(data_files)" = "$files_before" ] \
  || fail "the failed save left data files behind: $(ls -a "$dir")"
check_old_commit
echo "scenario 5 (io:enospc@1:1): the save failed with ENOSPC, removed its files; old commit intact"

# -- 6. a stalled worker: SIGSTOP (no heartbeats) ----------------------------
scenario=worker_stopped
reset_outputs
port=$(free_port)
for r in 0 1; do start_rank $r 2 "$port" --seed 7 --fault 'write:hang@1'; done
wait_line "$tmp/out.1" "rank 1 hangs in step write" 30 \
  || fail "rank 1 never reached its hang in the write step"
t_kill=$(now)
kill -STOP "${pid[1]}" || fail "cannot stop rank 1"
await_survivors "$t_kill" "rank0:${pid[0]}"
grep -q -E 'rank 1 silent' "$tmp/out.0" \
  || fail "rank 0 does not say that rank 1 went silent"
kill9 "rank 1 (stopped)" "${pid[1]}"
check_old_commit
echo "scenario 6 (SIGSTOP of worker rank 1 in write): rank 0 exited after ${detect}s; old commit intact"

# -- 7. a stalled worker that still heartbeats: only the step deadline -------
scenario=worker_stalled
reset_outputs
port=$(free_port)
common_saved=("${common[@]}")
common=(--dir "$dir" --size-mb 2 --layout mixed --step-timeout 2
        --peer-timeout-ms 1500)
for r in 0 1; do start_rank $r 2 "$port" --seed 8 --fault 'write:hang@1'; done
wait_line "$tmp/out.1" "rank 1 hangs in step write" 30 \
  || fail "rank 1 never reached its hang in the write step"
t_kill=$(now)
# Nobody is killed: rank 1 stays alive and silent in the protocol only.
await_survivors "$t_kill" "rank0:${pid[0]}" "rank1:${pid[1]}"
for r in 0 1; do
  grep -q -E 'timeout' "$tmp/out.$r" || fail "rank $r does not say timeout"
  grep -q -E 'rank 1\b' "$tmp/out.$r" || fail "rank $r does not name rank 1"
done
common=("${common_saved[@]}")
check_old_commit
echo "scenario 7 (rank 1 stalls in write, still heartbeating; step timeout 2 s): both ranks exited after ${detect}s; old commit intact"

# -- a fresh save over the leftovers ------------------------------------------
scenario=fresh_save
reset_outputs
leftovers=$(data_files)
tmp_left=no
[ -e "$dir/.metadata.tmp" ] && tmp_left=yes
timeout -k 5 60 "$launch" --nproc 2 -- "$worker" save "${common[@]}" --seed 5 \
  > "$tmp/out.fresh" 2>&1 || fail "a save after the kills must succeed"
[ "$(metadata_sum)" != "$md_before" ] || fail "the fresh save did not commit"
[ ! -e "$dir/.metadata.tmp" ] || fail ".metadata.tmp still there after a commit"
[ "$(data_files)" = "$clean_files" ] \
  || fail "$(data_files) data files after the fresh save, expected $clean_files: $(ls -a "$dir")"
timeout -k 5 60 "$launch" --nproc 3 -- "$worker" load "${common[@]}" \
  --seed 5 --verify > "$tmp/out.fresh_load" 2>&1 \
  || fail "the fresh checkpoint must load on 3 ranks and verify"
"$cli" verify "$dir" > "$tmp/out.fresh_verify" 2>&1 \
  || fail "dcpp verify must accept the fresh checkpoint"
echo "fresh save (seed 5): committed over $leftovers data files (.metadata.tmp left: $tmp_left); $clean_files remain; loads on 3 ranks"
echo "kill_test: all checks passed"
