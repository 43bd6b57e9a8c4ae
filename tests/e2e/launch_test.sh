#!/usr/bin/env bash
# dcpp-launch on its own (no torch, no dcpp ranks): environment, failure of
# one rank stops the others and names it, Ctrl-C is forwarded.
#   launch_test.sh PATH/TO/dcpp-launch
set -uo pipefail
launch="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAILED: $*"; exit 1; }

# 1. Every rank sees its variables and one shared secret.
"$launch" --nproc 3 --master-port 29999 -- sh -c \
  'echo "$RANK $WORLD_SIZE $LOCAL_RANK $MASTER_ADDR $MASTER_PORT $DCPP_SECRET" > '"$tmp"'/env.$RANK' \
  || fail "three ranks exiting 0 must exit 0"
for r in 0 1 2; do
  read -r rank world local addr port secret < "$tmp/env.$r"
  [ "$rank" = "$r" ] && [ "$world" = 3 ] && [ "$local" = "$r" ] \
    && [ "$addr" = 127.0.0.1 ] && [ "$port" = 29999 ] && [ ${#secret} -ge 16 ] \
    || fail "rank $r saw: $rank $world $local $addr $port $secret"
done
[ "$(cut -d' ' -f6 "$tmp"/env.* | sort -u | wc -l)" = 1 ] || fail "secrets differ"

# 2. One failing rank stops the others at once and is named.
start=$(date +%s)
"$launch" --nproc 3 --grace 1 -- sh -c '[ "$RANK" = 2 ] && exit 7; sleep 60' \
  2> "$tmp/err"
rc=$?
elapsed=$(( $(date +%s) - start ))
[ "$rc" = 7 ] || fail "exit code $rc, expected the failing rank's 7"
grep -q "rank 2 exited with code 7" "$tmp/err" || fail "rank not named: $(cat "$tmp/err")"
[ "$elapsed" -lt 10 ] || fail "took ${elapsed}s to stop the other ranks"

# 3. SIGINT to the launcher reaches every rank; nothing is left running.
# Each rank says it is ready once its trap is set; the launcher is
# interrupted only when both are (a bounded wait, not a fixed sleep).
"$launch" --nproc 2 -- sh -c 'trap "echo got-int > '"$tmp"'/int.$RANK; exit 130" INT; : > '"$tmp"'/ready.$RANK; sleep 60 & wait' &
pid=$!
deadline=$((SECONDS + 20))
until [ -f "$tmp/ready.0" ] && [ -f "$tmp/ready.1" ]; do
  [ "$SECONDS" -lt "$deadline" ] || { kill -9 "$pid"; fail "ranks not ready after 20 s"; }
  sleep 0.05
done
kill -INT "$pid"
wait "$pid"
rc=$?
[ "$rc" -ne 0 ] || fail "an interrupted job must exit non-zero"
[ -f "$tmp/int.0" ] && [ -f "$tmp/int.1" ] || fail "SIGINT not forwarded to every rank"
echo "launch_test: all 3 checks passed"
