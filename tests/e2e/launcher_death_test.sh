#!/usr/bin/env bash
# kill -9 of dcpp-launch: its ranks must die with it (PR_SET_PDEATHSIG), not
# run on committing or hang until a step deadline.
#
#   1. two ranks running a long command (each writes its pid, then sleeps)
#   2. two dcpp-worker ranks saving, rank 1 hung in the write step
#      (write:hang@1; its process stays alive, rank 0 waits on a 60 s step
#      deadline)
#
# Each case waits (bounded) until the ranks run, kills the launcher with -9
# and then requires every rank process to be gone within $bound seconds.
#
#   launcher_death_test.sh BUILD_APPS_DIR
set -uo pipefail
apps="$1"
launch="$apps/dcpp-launch"
worker="$apps/dcpp-worker"
bound=5

tmp=$(mktemp -d)
rank_pids=()
cleanup() {
  local p
  for p in "${rank_pids[@]}" $(jobs -p); do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
# On failure, also shows what the worker ranks printed (case 2).
fail() {
  echo "FAILED: $*"
  [ -s "$tmp/err" ] && { echo "--- ranks' stderr:"; cat "$tmp/err"; }
  exit 1
}

# A process is alive while /proc has it in any state but zombie (an orphan
# whose new parent does not reap it stays a zombie, and it runs nothing).
alive() {
  local stat state
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  state=${stat##*) }
  [ "${state%% *}" != Z ]
}

# until_or_fail SECONDS WHAT CMD...: polls CMD every 50 ms.
until_or_fail() {
  local deadline=$((SECONDS + $1)) what="$2"
  shift 2
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what"
    sleep 0.05
  done
}

none_alive() {
  local p
  for p in "${rank_pids[@]}"; do
    alive "$p" && return 1
  done
  return 0
}

# kill_launcher_and_check CASE LAUNCHER_PID
kill_launcher_and_check() {
  local name="$1" launcher="$2" p left
  kill -9 "$launcher"
  wait "$launcher" 2>/dev/null
  local deadline=$((SECONDS + bound))
  until none_alive; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      left=""
      for p in "${rank_pids[@]}"; do alive "$p" && left+=" $p"; done
      fail "$name: rank process(es)$left still running ${bound}s after" \
        "kill -9 of dcpp-launch"
    fi
    sleep 0.05
  done
  echo "$name: every rank died with its launcher"
  rank_pids=()
}

# 1. A long-running command: each rank writes its pid (exec keeps it).
"$launch" --nproc 2 -- sh -c 'echo $$ > '"$tmp"'/pid.$RANK.tmp && mv '"$tmp"'/pid.$RANK.tmp '"$tmp"'/pid.$RANK; exec sleep 300' &
launcher=$!
both_pids() { [ -s "$tmp/pid.0" ] && [ -s "$tmp/pid.1" ]; }
until_or_fail 20 "sleep ranks did not start within 20 s" both_pids
rank_pids=("$(cat "$tmp/pid.0")" "$(cat "$tmp/pid.1")")
kill_launcher_and_check "sleeping ranks" "$launcher"

# 2. dcpp-worker ranks in a save, rank 1 hung after its write.
export DCPP_SECRET=launcher-death-secret
: > "$tmp/err"
"$launch" --nproc 2 -- "$worker" save --dir "$tmp/ckpt" --size-mb 1 \
  --step-timeout 60 --fault 'write:hang@1' 2> "$tmp/err" &
launcher=$!
injected() { grep -q "dcpp: injected fault" "$tmp/err"; }
until_or_fail 60 "no injected fault within 60 s" injected
mapfile -t rank_pids < <(pgrep -P "$launcher")
[ "${#rank_pids[@]}" = 2 ] \
  || fail "expected 2 worker processes under the launcher, saw ${rank_pids[*]}"
kill_launcher_and_check "hung dcpp-worker ranks" "$launcher"
[ ! -e "$tmp/ckpt/.metadata" ] || fail "a save with a hung rank committed"

echo "launcher_death_test: both checks passed"
