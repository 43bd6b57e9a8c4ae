#!/usr/bin/env bash
# Bounded soak test with real rank processes: save/load cycles into a
# checkpoint root (ROOT/step_NNNNNNNNN/), each save under a random injected
# fault (core/fault.hpp via dcpp-worker --fault) or a `kill -9` of a random
# rank at a random moment. After every cycle:
#   - a save that reported success is committed on disk (and vice versa a
#     committed step is never lost later);
#   - `dcpp latest` names exactly the newest committed step;
#   - that step loads on a random number of ranks with --verify (bit-exact
#     values of its seed), and `dcpp verify` passes;
#   - no rank process of the cycle is left running;
# and every few cycles `dcpp prune --keep 3` keeps the newest commits.
#
#   soak_processes.sh APPS_DIR SCRATCH_DIR [SECONDS] [SEED]
# Prints one summary line with the counts; exits non-zero on any failure.
set -uo pipefail
apps="$1"
scratch="$2"
duration="${3:-60}"
seed="${4:-$(( $(date +%s) % 100000 ))}"
RANDOM=$seed
root="$scratch/root"
rm -rf "$scratch"
mkdir -p "$root"
trap 'pkill -9 -f -- "--dir $root/" 2>/dev/null; true' EXIT
export DCPP_SECRET=soak-processes
common=(--size-mb 2 --layout mixed --step-timeout 3 --peer-timeout-ms 1000)
cycles=0 faults=0 kills=0 aborts=0 commits=0 loads=0 failures=0 lost=0 hangs=0
last=0
start=$(date +%s)
problem() {
  echo "FAILED cycle $cycles ($what): $*"
  failures=$((failures + 1))
}

while :; do
  now=$(date +%s)
  [ $(( now - start )) -lt "$duration" ] || break
  cycles=$((cycles + 1))
  step=$cycles
  dir=$(printf '%s/step_%09d' "$root" "$step")
  world=$(( 2 + RANDOM % 2 ))
  victim=$(( RANDOM % world ))
  fault=""
  kill_after_ms=-1
  # The first cycle commits, so that there is always a checkpoint to load.
  pick=$(( cycles == 1 ? 0 : RANDOM % 14 ))
  case $pick in
    0|1|2) ;;
    3) fault="write:exit@$victim" ;;
    4) fault="plan:exit@$victim" ;;
    5) fault="commit:exit@0" ;;
    6) fault="rename:exit@0" ;;
    7) fault="io:enospc@$victim:1" ;;
    8) fault="io:eio@$victim:1" ;;
    9) fault="write:fail@$victim" ;;
    10) fault="msg:drop@$victim>c" ;;
    11) fault="io:short@$victim:1" ;;
    12) fault="write:slow@$victim:300" ;;
    13) kill_after_ms=$(( RANDOM % 700 )) ;;
  esac
  what="world $world, ${fault:-no fault}"
  [ "$kill_after_ms" -ge 0 ] && what="world $world, kill -9 of rank $victim after ${kill_after_ms} ms"
  [ -n "$fault" ] && faults=$((faults + 1))
  args=(save --dir "$dir" --seed "$step" "${common[@]}")
  [ -n "$fault" ] && args+=(--fault "$fault")
  t0=$(( $(date +%s%N) / 1000000 ))
  timeout 60 "$apps/dcpp-launch" --nproc "$world" -- "$apps/dcpp-worker" "${args[@]}" \
    > "$scratch/save.log" 2>&1 &
  job=$!
  if [ "$kill_after_ms" -ge 0 ]; then
    sleep "$(printf '0.%03d' "$kill_after_ms")"
    # The victim's process: the worker whose environment says RANK=victim.
    for pid in $(pgrep -f -- "--dir $dir " 2>/dev/null); do
      if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "RANK=$victim"; then
        if kill -9 "$pid" 2>/dev/null; then kills=$((kills + 1)); fi
      fi
    done
  fi
  wait "$job"; rc=$?
  t_save=$(( $(date +%s%N) / 1000000 - t0 ))
  [ "$rc" = 124 ] && { hangs=$((hangs + 1)); problem "the save did not end within 60 s"; }
  if [ -f "$dir/.metadata" ]; then
    commits=$((commits + 1))
    last=$step
  else
    aborts=$((aborts + 1))
    [ "$rc" = 0 ] && { lost=$((lost + 1)); problem "the save reported success but nothing is committed"; }
  fi
  [ -e "$dir/.metadata.tmp" ] && [ "$rc" = 0 ] && problem ".metadata.tmp left by a successful save"
  # The launcher has exited; its ranks must be gone too (within 2 s).
  gone_by=$(( $(date +%s%N) / 1000000 + 2000 ))
  while pgrep -f -- "--dir $dir " > /dev/null 2>&1 \
        && [ "$(( $(date +%s%N) / 1000000 ))" -lt "$gone_by" ]; do
    sleep 0.02
  done
  if pgrep -f -- "--dir $dir " > /dev/null 2>&1; then
    problem "rank processes of the save are still running 2 s after it ended"
    pkill -9 -f -- "--dir $dir " 2>/dev/null
  fi
  # The newest committed step is the one the last successful commit left.
  found=$("$apps/dcpp" latest --step "$root" 2>&1)
  if [ "$found" != "$last" ]; then
    lost=$((lost + 1))
    problem "dcpp latest says '$found', expected $last"
  fi
  ldir=$(printf '%s/step_%09d' "$root" "$last")
  lworld=$(( 1 + RANDOM % 3 ))
  if timeout 60 "$apps/dcpp-launch" --nproc "$lworld" -- "$apps/dcpp-worker" load \
       --dir "$ldir" --seed "$last" --verify "${common[@]}" > "$scratch/load.log" 2>&1 \
     && "$apps/dcpp" verify "$ldir" > "$scratch/verify.log" 2>&1; then
    loads=$((loads + 1))
  else
    lost=$((lost + 1))
    problem "step $last does not load and verify on $lworld ranks: $(tail -3 "$scratch/load.log" "$scratch/verify.log")"
  fi
  echo "cycle $cycles: $what: save rc $rc in ${t_save} ms, $( [ "$last" = "$step" ] && echo committed || echo aborted ); step $last loads on $lworld ranks"
  if [ $(( cycles % 5 )) = 0 ]; then
    "$apps/dcpp" prune "$root" --keep 3 > /dev/null 2>&1 || problem "prune failed"
    [ -f "$ldir/.metadata" ] || { lost=$((lost + 1)); problem "prune removed the newest commit"; }
  fi
done
elapsed=$(( $(date +%s) - start ))
echo "soak_processes: seed $seed, $cycles cycles in ${elapsed} s: $faults faults injected, $kills kill -9, $aborts saves aborted, $commits committed, $loads loads verified, $hangs hangs, data lost $lost"
[ "$failures" = 0 ] && [ "$lost" = 0 ] && [ "$cycles" -ge 5 ]
