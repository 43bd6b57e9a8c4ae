#!/usr/bin/env bash
# A 1 GiB save on two rank processes, on a pseudo-terminal (script(1)):
#   - the job shows ONE progress line ("save 1: write ... MiB ..%, ... MiB/s,
#     ETA ..."), redrawn in place, printed by the coordinator's process only;
#   - every rank's --json report counts exactly the bytes of the data files
#     in the checkpoint directory (*.distcp), and names the step times.
# The checkpoint is removed at the end.
set -uo pipefail
bin=$1
fail() { echo "FAILED: $*"; exit 1; }
command -v script > /dev/null || { echo "SKIP: script(1) (util-linux) missing"; exit 77; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dcpp-progress.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

script -qfec "'$bin/dcpp-launch' --nproc 2 -- '$bin/dcpp-worker' save \
  --dir '$tmp/ckpt' --size-mb 1024 --json" /dev/null > "$tmp/tty" 2>&1
rc=$?
[ "$rc" = 0 ] || fail "save exited $rc: $(tr '\r' '\n' < "$tmp/tty" | tail -20)"

python3 - "$tmp/tty" "$tmp/ckpt" <<'PY' || exit 1
import json, os, re, sys
raw = open(sys.argv[1], "rb").read().decode("utf-8", "replace")
ckpt = sys.argv[2]
def fail(msg):
    print("FAILED:", msg)
    print(raw.replace("\r", "\\r\n")[-3000:])
    sys.exit(1)
lines = raw.replace("\r\n", "\n").split("\n")
# Lines the terminal keeps: what follows the last \r of each line.
kept = [l.split("\r")[-1].replace("\x1b[K", "") for l in lines]
progress_kept = [l for l in kept if l.startswith("save 1:")]
if len(progress_kept) != 1:
    fail(f"{len(progress_kept)} progress lines kept on the terminal, want 1")
if not re.match(r"save 1: done, \d+\.\d MiB in [\d.]+ s \([\d.]+ MiB/s\)$",
                progress_kept[0]):
    fail(f"final progress line: {progress_kept[0]!r}")
# Every redraw (the text between two \r) of a progress line.
redraws = [seg.replace("\x1b[K", "") for l in lines for seg in l.split("\r")
           if seg.startswith("save 1:")]
running = [s for s in redraws if re.match(
    r"save 1: (plan|write|commit) [\d.]+/[\d.]+ MiB (\d+|--)%, [\d.]+ MiB/s, ETA ", s)]
if not running:
    fail("no progress redraw while the save ran")
if any("rank" in s for s in redraws):
    fail("a progress line names a rank")
print(f"progress: {len(redraws)} redraws of one line; last running: {running[-1]!r}")
print(f"final: {progress_kept[0]!r}")
reports = [json.loads(l) for l in kept if l.startswith("{")]
if sorted(r["rank"] for r in reports) != [0, 1]:
    fail(f"want one JSON report per rank, got {reports}")
data = [f for f in os.listdir(ckpt) if f.endswith(".distcp")]
size = sum(os.path.getsize(os.path.join(ckpt, f)) for f in data)
for r in reports:
    if not r["ok"] or r["bytes"] != size or r["files"] != len(data):
        fail(f"report {r} != {size} bytes in {len(data)} files")
    steps = r["steps_s"]
    if not (steps["plan"] > 0 and steps["write"] > 0 and steps["commit"] > 0
            and r["bytes_per_s"] > 0 and r["ranks"] == 2):
        fail(f"report without step times: {r}")
print("report:", json.dumps(reports[0]))
PY
echo "OK"
