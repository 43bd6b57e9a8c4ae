#!/usr/bin/env bash
# Installs what dcpp needs on Debian bookworm (run as root). Every package
# is Debian's own; nothing is downloaded from elsewhere.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libcaf-dev libtorch-dev libcereal-dev libzmq3-dev cppzmq-dev libsodium-dev catch2
  libcli11-dev libspdlog-dev libxxhash-dev nlohmann-json3-dev
  python3 python3-torch python3-matplotlib iproute2 clang-format tcpdump
  openmpi-bin debootstrap
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
