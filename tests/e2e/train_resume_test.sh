#!/usr/bin/env bash
# A training loop killed and resumed ends bit-identical to one that never
# stopped (apps/train_example.cpp: 2 rank processes under dcpp-launch, a
# sharded embedding and a replicated MLP, Adam, async saves through the
# checkpoint manager every 4 steps, max_to_keep 2):
#
#   A. uninterrupted to step $steps, final state dumped;
#   B. the same, in a fresh root, killed three times and restarted each
#      time from the latest committed step:
#      1. rank 1 kills itself with SIGKILL after step K1 (random, printed;
#         a save step, so its async save is in flight);
#      2. rank 0 (the coordinator) kills itself after step K2, random in
#         8..11 steps after the step run 1 resumes from, so that the run
#         has committed a save of its own (an async save finishes before
#         the next one starts): the next run resumes from it;
#      3. the coordinator's process dies (_Exit, as kill -9) in the commit
#         of the first save after the restart, with `.metadata.tmp`
#         written and not renamed (DCPP_FAULT=rename:exit@0);
#      then a last restart runs to the end.
# The final parameters and optimizer state of every rank must be
# byte-identical to A's, and the root must hold only the newest two
# committed steps (the uncommitted leftovers removed by retention).
#
#   train_resume_test.sh BUILD_APPS_DIR [SEED]
set -uo pipefail
apps="$1"
seed=${2:-$(( $(date +%s) % 100000 ))}
launch="$apps/dcpp-launch"
train="$apps/dcpp_train_example"
cli="$apps/dcpp"
RANDOM=$seed
echo "seed $seed (replay: train_resume_test.sh $apps $seed)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log="$tmp/log"
: >"$log"
fail() {
  echo "FAILED: $*"
  echo "---- output ----"
  cat "$log"
  exit 1
}

steps=30
common=(--steps "$steps" --save-every 4 --keep 2)

# run ROOT DUMP ARGS...: one job of 2 ranks; its exit code.
run() {
  local root=$1 dump=$2
  shift 2
  echo "---- run $* ----" >>"$log"
  timeout -k 5 60 "$launch" --nproc 2 -- "$train" --root "$root" \
    "${common[@]}" --dump "$dump.{rank}" "$@" >>"$log" 2>&1
}

latest() { "$cli" latest "$1" --step 2>/dev/null || echo none; }

run "$tmp/a" "$tmp/a.dump" || fail "the uninterrupted run failed"
for r in 0 1; do
  [ -s "$tmp/a.dump.$r" ] || fail "run A left no dump of rank $r"
done

b="$tmp/b"
# kill_run NAME STEP RANK: a run of B in which RANK kills itself after STEP;
# sets $latest to the newest committed step afterwards.
kill_run() {
  run "$b" "$tmp/b.dump" --kill-at "$2" --kill-rank "$3" \
    && fail "run $1 with rank $3 killed after step $2 succeeded"
  grep -q "killing myself (SIGKILL) after step $2" "$log" \
    || fail "rank $3 was not killed after step $2"
  latest=$(latest "$b")
  echo "$1: rank $3 killed after step $2; latest committed step $latest"
  [ "$latest" != none ] && [ "$latest" -le "$2" ] \
    || fail "latest after $1 is $latest"
}
# 1. rank 1 after a save step in 8..16 (multiples of 4).
k1=$(( 8 + 4 * (RANDOM % 3) ))
kill_run B1 "$k1" 1
l1=$latest
[ ! -e "$tmp/b.dump.0" ] || fail "a killed run wrote a dump"
# 2. rank 0 after a step in l1+8 .. l1+11 (a save step or not): the save
# of step l1+4 committed when the one of l1+8 started.
k2=$(( l1 + 8 + RANDOM % 4 ))
kill_run B2 "$k2" 0
l2=$latest
[ "$l2" -gt "$l1" ] || fail "run B2 committed nothing after step $l1"

# 3. the coordinator dies in the first commit after the restart.
DCPP_FAULT=rename:exit@0 run "$b" "$tmp/b.dump" \
  && fail "run B3 with the coordinator dying in its commit succeeded"
grep -q "injected fault" "$log" || fail "the rename fault did not fire"
l3=$(latest "$b")
echo "B3: coordinator died in the commit after step $l2; latest $l3"
[ "$l3" = "$l2" ] || fail "latest moved from $l2 to $l3 without a commit"
ls "$b"/step_*/.metadata.tmp >/dev/null 2>&1 \
  || fail "no .metadata.tmp left by the commit that died"

# 4. to the end.
run "$b" "$tmp/b.dump" || fail "the last restart failed"
grep -q "trained steps $((l3 + 1))\.\.$steps" "$log" \
  || fail "the last restart did not resume after step $l3"
for r in 0 1; do
  cmp "$tmp/a.dump.$r" "$tmp/b.dump.$r" \
    || fail "rank $r: the resumed run's final state differs from run A's"
done
left=$(cd "$b" && ls -d step_* | tr '\n' ' ')
[ "$left" = "step_000000024 step_000000028 " ] \
  || fail "the root holds $left instead of the newest two steps"
echo "train_resume_test: killed after steps $k1 (rank 1), $k2 (rank 0) and" \
  "in a commit; resumed from $l1, $l2, $l3; final state of both ranks" \
  "bit-identical to the uninterrupted run; root: $left"
