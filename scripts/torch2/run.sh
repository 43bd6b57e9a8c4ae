#!/usr/bin/env bash
# Runs a command inside the PyTorch 2.6 chroot that chroot.sh made:
#   scripts/torch2/run.sh [--root DIR] [--bind PATH]... [--cwd PATH] -- CMD ARGS...
# The command runs in a private mount namespace (unshare -m), so the mounts
# it needs vanish with it and parallel runs do not meet: /proc and /dev
# (with /dev/shm), every --bind PATH at the same path inside (scratch
# folders, the build tree), and the host's root at /host, so that
# `/opt/dcpp/host-exec PROGRAM ARGS` runs a host program (dcpp's binaries)
# from a process inside, e.g. a rank that torchrun 2.6 starts. PYTHONPATH
# holds /opt/dcpp (its sitecustomize.py turns off TCPStore's libuv default,
# which Debian's 2.6 lacks). DIR: --root, else $DCPP_TORCH2_ROOT. Exits 77,
# printing why, when DIR holds no ready chroot.
set -euo pipefail
root=${DCPP_TORCH2_ROOT:-}
binds=()
cwd=$PWD
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$2; shift 2 ;;
    --bind) binds+=("$(realpath -m "$2")"); shift 2 ;;
    --cwd) cwd=$(realpath -m "$2"); shift 2 ;;
    --) shift; break ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: run.sh [--root DIR] [--bind PATH]... -- CMD ARGS..." >&2; exit 2; }
if [ -z "$root" ] || [ ! -f "$root/.dcpp-torch2-ready" ]; then
  echo "SKIP: no PyTorch 2.6 chroot at '${root:-<unset: pass --root or DCPP_TORCH2_ROOT>}' (make it with scripts/torch2/chroot.sh DIR)" >&2
  exit 77
fi
root=$(realpath "$root")
mounts="mount --rbind /proc '$root/proc' && mount --rbind /dev '$root/dev' && mount --rbind / '$root/host'"
for b in "${binds[@]}"; do
  mkdir -p "$b"
  mounts+=" && mkdir -p '$root$b' && mount --bind '$b' '$root$b'"
done
exec unshare -m --propagation private sh -c "$mounts && exec chroot '$root' /bin/sh -c 'cd \"\$0\" && exec \"\$@\"' '$cwd' env PYTHONPATH=/opt/dcpp\${PYTHONPATH:+:\$PYTHONPATH} \"\$@\"" sh "$@"
