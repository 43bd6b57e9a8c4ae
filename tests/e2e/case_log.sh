# Sourced by the case scripts of the rank-process tests, with `scratch` and
# `case_name` set: a fresh scratch folder, the case's log in it, and
# fail() printing the case's name and its log.
rm -rf "$scratch"
mkdir -p "$scratch"
log=$scratch/log.txt
: >"$log"

fail() {
  echo "FAIL ($case_name): $*"
  echo "---- output ----"
  cat "$log"
  exit 1
}
