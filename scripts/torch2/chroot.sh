#!/usr/bin/env bash
# Makes (once) a Debian trixie chroot with PyTorch 2.6 for the interop2 tests:
#   scripts/torch2/chroot.sh DIR
# Idempotent: a DIR that is ready (DIR/.dcpp-torch2-ready holds this
# script's recipe version) is reused at once. Otherwise debootstrap builds it
# from Debian's mirror (~5 minutes, ~1.3 GB), apt's cache is dropped, and the
# files scripts/torch2/run.sh relies on are put in. Exits 77, printing why,
# when it cannot run (not root, or Debian's mirror cannot be reached); any
# other failure exits 1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: chroot.sh DIR}
recipe="trixie minbase python3-torch python3-numpy python3-safetensors r1"
mirror=${DCPP_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ -f "$dir/.dcpp-torch2-ready" ] && [ "$(cat "$dir/.dcpp-torch2-ready")" = "$recipe" ]; then
  echo "$dir"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: making the PyTorch 2.6 chroot needs root (debootstrap, chroot)" >&2
  exit 77
fi

mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
# Another process may have finished it while this one waited for the lock.
if [ -f "$dir/.dcpp-torch2-ready" ] && [ "$(cat "$dir/.dcpp-torch2-ready")" = "$recipe" ]; then
  echo "$dir"
  exit 0
fi

if ! command -v debootstrap >/dev/null; then
  echo "torch2: installing debootstrap" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2; then
    apt-get update -q >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2 || {
      echo "SKIP: debootstrap cannot be installed (no Debian mirror reachable)" >&2
      exit 77
    }
  fi
fi
if ! timeout 30 bash -c "exec 3<>/dev/tcp/$(echo "$mirror" | sed -E 's#^[a-z]+://([^/:]+).*#\1#')/80" 2>/dev/null; then
  echo "SKIP: Debian's mirror $mirror cannot be reached; the PyTorch 2.6 chroot cannot be made" >&2
  exit 77
fi

tmp="$dir.tmp"
rm -rf "$tmp"
echo "torch2: debootstrap trixie into $tmp (a few minutes)" >&2
start=$(date +%s)
if ! debootstrap --variant=minbase \
    --include=python3-torch,python3-numpy,python3-safetensors \
    trixie "$tmp" "$mirror" >"$dir.debootstrap.log" 2>&1; then
  tail -20 "$dir.debootstrap.log" >&2
  if grep -q -E "Failed getting release file|Couldn't download|Temporary failure in name resolution" "$dir.debootstrap.log"; then
    echo "SKIP: debootstrap could not download from $mirror" >&2
    rm -rf "$tmp"
    exit 77
  fi
  echo "torch2: debootstrap failed (log: $dir.debootstrap.log)" >&2
  exit 1
fi
rm -f "$tmp"/var/cache/apt/archives/*.deb
cp /etc/hosts "$tmp/etc/hosts"
mkdir -p "$tmp/opt/dcpp" "$tmp/host"
cp "$here/sitecustomize.py" "$tmp/opt/dcpp/sitecustomize.py"
# Runs a program of the host (dcpp's binaries link the host's libraries)
# from inside the chroot, in the same working directory: run.sh binds the
# host's root at /host.
cat >"$tmp/opt/dcpp/host-exec" <<'SH'
#!/bin/sh
exec chroot /host /bin/sh -c 'cd "$0" && exec "$@"' "$PWD" "$@"
SH
chmod +x "$tmp/opt/dcpp/host-exec"
rm -rf "$dir"
mv "$tmp" "$dir"
echo "$recipe" >"$dir/.dcpp-torch2-ready"
echo "torch2: chroot ready in $(( $(date +%s) - start )) s: $(chroot "$dir" python3 -c 'import torch; print(torch.__version__)')" >&2
echo "$dir"
