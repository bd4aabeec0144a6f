#!/usr/bin/env bash
# Join and window side by side: this package (release build) and the upstream laminardb 0.17.0
# from PyPI, each in its own virtualenv, on the same data (benches/python/join_window.py).
# Usage: benches/python/run_join_window.sh [N_JOIN] [N_WINDOW] [RUNS]
set -euo pipefail
source "$(dirname "$0")/venvs.sh"
NJ=${1:-1000000}
NW=${2:-10000000}
RUNS=${3:-5}
mk upstream "laminardb==0.17.0" pyarrow
build_ours

run() { # venv workload n label
  local out=()
  for _ in $(seq "$RUNS"); do
    out+=("$("$venvs/$1/bin/python" "$here/join_window.py" laminardb "$2" "$3" 2>/dev/null | awk '{print $3, $4}')")
  done
  printf '%s\n' "${out[@]}" | sort -n |
    awk -v l="$4" -v w="$2" -v n="$3" '{r[NR]=$1; m[NR]=$2} END {
      mx=0; for (i=1;i<=NR;i++) if (m[i]>mx) mx=m[i];
      printf "%-7s %-18s N=%-9d median %12.0f rows/s  (min %.0f, max %.0f)  peak RSS %d MB\n", w, l, n, r[int((NR+1)/2)], r[1], r[NR], mx}'
}
for w in join window; do
  n=$NJ; [ "$w" = window ] && n=$NW
  run ours "$w" "$n" "laminardb (this)"
  run upstream "$w" "$n" "laminardb 0.17.0"
done
