#!/usr/bin/env bash
# Formats the C++ sources with clang-format and the repository's
# .clang-format, or checks them.
#
#   scripts/format.sh                 format every tracked C++ file in place
#   scripts/format.sh --check         change nothing; list the files that
#                                     would change, exit 1 if there are any
#   scripts/format.sh [--check] FILE...   only these files
#
# Needs clang-format 14 (Debian bookworm: apt-get install -y clang-format);
# $CLANG_FORMAT picks another binary. Other versions may format differently.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
if [ "${1:-}" = --check ]; then
  check=1
  shift
fi
clang_format=${CLANG_FORMAT:-clang-format}
if ! command -v "$clang_format" >/dev/null; then
  echo "format.sh: $clang_format not found (apt-get install -y clang-format)" >&2
  exit 2
fi
version=$("$clang_format" --version | sed -n 's/.*version \([0-9]*\).*/\1/p')
if [ "$version" != 14 ]; then
  echo "format.sh: warning: clang-format $version; .clang-format is tuned for 14" >&2
fi

if [ $# -gt 0 ]; then
  files=("$@")
else
  mapfile -t files < <(git ls-files '*.cpp' '*.hpp' '*.h')
fi
[ ${#files[@]} -gt 0 ] || exit 0

if [ $check = 0 ]; then
  "$clang_format" -i --style=file "${files[@]}"
  exit 0
fi

changed=0
for f in "${files[@]}"; do
  if ! "$clang_format" --style=file "$f" | cmp -s - "$f"; then
    lines=$("$clang_format" --style=file "$f" | diff "$f" - | grep -c '^[<>]' || true)
    echo "$f: $lines lines would change"
    changed=$((changed + 1))
  fi
done
if [ $changed -gt 0 ]; then
  echo "format.sh: $changed of ${#files[@]} files are not formatted (run scripts/format.sh)"
  exit 1
fi
echo "format.sh: ${#files[@]} files formatted"
