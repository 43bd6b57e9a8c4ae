#!/usr/bin/env bash
# dcpp as a CMake package, three ways, each building and running the
# consumer in tests/package/consumer/main.cpp (a no_dist save + load):
#
#   install       `cmake --install` of the build tree into a fresh prefix;
#                 the consumer finds it with find_package(dcpp) and
#                 CMAKE_PREFIX_PATH (and nothing from the source tree).
#   subdirectory  a parent project (tests/package/subdirectory) that does
#                 add_subdirectory(dcpp) without finding Torch itself; dcpp
#                 builds its libraries only, with the parent's (empty)
#                 build type.
#   deb           `cpack -G DEB`, `dpkg -i` of the package, the consumer
#                 built against /usr (find_package(dcpp) without hints),
#                 the installed programs run, `dpkg -r`. Needs root; skipped
#                 (exit 77) with the reason when not root or when a dcpp
#                 package or files under /usr are already there.
#
# usage: package_test.sh MODE SOURCE_DIR BUILD_DIR SCRATCH_DIR
# The environment carries the top-level build's generator, compiler and
# compiler launcher (ccache): DCPP_CMAKE_GENERATOR, DCPP_CXX, DCPP_LAUNCHER.
set -euo pipefail

mode=$1
src=$(cd "$2" && pwd)
build=$(cd "$3" && pwd)
scratch=$4
jobs=${DCPP_JOBS:-2}

skip() {
  echo "SKIP: $*"
  exit 77
}

# configure_and_build SOURCE BINARY ARGS...: with the top-level build's
# generator, compiler and launcher.
configure_and_build() {
  local source=$1 binary=$2
  shift 2
  local args=(-S "$source" -B "$binary" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON)
  [ -n "${DCPP_CMAKE_GENERATOR:-}" ] && args+=(-G "$DCPP_CMAKE_GENERATOR")
  [ -n "${DCPP_CXX:-}" ] && args+=(-DCMAKE_CXX_COMPILER="$DCPP_CXX")
  [ -n "${DCPP_LAUNCHER:-}" ] &&
    args+=(-DCMAKE_CXX_COMPILER_LAUNCHER="$DCPP_LAUNCHER")
  echo "+ cmake ${args[*]} $*"
  cmake "${args[@]}" "$@"
  echo "+ cmake --build $binary -j $jobs"
  cmake --build "$binary" -j "$jobs"
}

# no_include_of DIR COMPILE_COMMANDS: the consumer's compile command does
# not name DIR as an include directory (it used the installed copy only).
no_include_of() {
  local dir=$1 commands=$2
  if grep -E -o -e "-(I|isystem) *$dir([ \"]|\$)" "$commands"; then
    echo "FAIL: the consumer includes from $dir (above)"
    exit 1
  fi
}

run_consumer() {
  echo "+ $1"
  "$1"
}

case $mode in
install)
  rm -rf "$scratch"
  mkdir -p "$scratch"
  prefix=$scratch/prefix
  echo "+ cmake --install $build --prefix $prefix"
  cmake --install "$build" --prefix "$prefix" >"$scratch/install.log"
  for f in include/dcpp/actors/checkpointer.hpp include/dcpp/core/error.hpp \
    lib/cmake/dcpp/dcppConfig.cmake lib/cmake/dcpp/dcppConfigVersion.cmake \
    bin/dcpp bin/dcpp-launch bin/dcpp-worker bin/dcpp-coordinator; do
    [ -e "$prefix/$f" ] || { echo "FAIL: $prefix/$f was not installed"; exit 1; }
  done
  configure_and_build "$src/tests/package/consumer" "$scratch/build" \
    -DCMAKE_PREFIX_PATH="$prefix"
  no_include_of "$src" "$scratch/build/compile_commands.json"
  no_include_of "$build/include" "$scratch/build/compile_commands.json"
  run_consumer "$scratch/build/consumer"
  ;;

subdirectory)
  # The same build directory every run, so that ccache hits on reruns.
  rm -rf "$scratch"
  mkdir -p "$scratch"
  configure_and_build "$src/tests/package/subdirectory" "$scratch/build" \
    -DDCPP_SOURCE_DIR="$src"
  run_consumer "$scratch/build/consumer"
  ;;

deb)
  [ "$(id -u)" -eq 0 ] || skip "installing the .deb needs root (dpkg -i)"
  command -v dpkg >/dev/null || skip "no dpkg: not a Debian system"
  # One system-wide install at a time (other build trees on this machine).
  exec 9>/var/lock/dcpp-package-test.lock
  flock 9
  if dpkg-query -W -f='${Status}' dcpp 2>/dev/null |
    grep -q "install ok installed"; then
    skip "a dcpp package is already installed; this test would replace" \
      "and remove it (dpkg -r dcpp to run it)"
  fi
  for p in /usr/include/dcpp /usr/lib/cmake/dcpp /usr/bin/dcpp; do
    [ -e "$p" ] && skip "$p exists (not from a package); this test would" \
      "overwrite and remove it"
  done
  rm -rf "$scratch"
  mkdir -p "$scratch"
  echo "+ cpack -G DEB -B $scratch/cpack (in $build)"
  (cd "$build" && cpack -G DEB -B "$scratch/cpack") >"$scratch/cpack.log" 2>&1 ||
    { cat "$scratch/cpack.log"; exit 1; }
  debs=("$scratch"/cpack/dcpp_*.deb)
  deb=${debs[0]}
  [ -f "$deb" ] || { cat "$scratch/cpack.log"; echo "FAIL: no .deb"; exit 1; }
  ls -l "$deb"
  dpkg-deb --field "$deb" Package Version Architecture Depends
  trap 'echo "+ dpkg -r dcpp"; dpkg -r dcpp >/dev/null' EXIT
  echo "+ dpkg -i $deb"
  dpkg -i "$deb"
  configure_and_build "$src/tests/package/consumer" "$scratch/build"
  found=$(sed -n 's/^dcpp_DIR:PATH=//p' "$scratch/build/CMakeCache.txt")
  [ "$found" = /usr/lib/cmake/dcpp ] ||
    { echo "FAIL: find_package(dcpp) found '$found', not /usr's"; exit 1; }
  no_include_of "$src" "$scratch/build/compile_commands.json"
  no_include_of "$build/include" "$scratch/build/compile_commands.json"
  run_consumer "$scratch/build/consumer"
  for p in dcpp dcpp-launch dcpp-worker dcpp-coordinator; do
    echo "+ /usr/bin/$p --help"
    "/usr/bin/$p" --help >/dev/null
  done
  ;;

*)
  echo "usage: $0 install|subdirectory|deb SOURCE_DIR BUILD_DIR SCRATCH_DIR"
  exit 2
  ;;
esac
echo "OK: $mode"
