#!/usr/bin/env bash
# Python sources side by side: this package (release build), Pathway (pw.io.python) and Bytewax,
# each in its own virtualenv, on the same rows (benches/python/custom_source.py).
# Usage: benches/python/run_custom_source.sh [N_BATCHES] [N_DICTS] [RUNS]
set -euo pipefail
source "$(dirname "$0")/venvs.sh"
NB=${1:-20000000}
ND=${2:-2000000}
RUNS=${3:-5}
mk pathway pathway
mk bytewax bytewax pyarrow
build_ours

run() { # venv engine mode n
  local out=()
  for _ in $(seq "$RUNS"); do
    out+=("$("$venvs/$1/bin/python" "$here/custom_source.py" "$2" "$3" "$4" 2>/dev/null | awk '{print $3}')")
  done
  printf '%s\n' "${out[@]}" | sort -n |
    awk -v e="$2" -v m="$3" -v n="$4" '{a[NR]=$1} END {printf "%-10s %-8s N=%-9d median %12.0f rows/s  (min %.0f, max %.0f)\n", e, m, n, a[int((NR+1)/2)], a[1], a[NR]}'
}
echo "Python source -> COUNT/SUM aggregate, $RUNS runs each"
for mode in batches dicts; do
  n=$NB; [ "$mode" = dicts ] && n=$ND
  run ours laminardb "$mode" "$n"
  run pathway pathway "$mode" "$n"
  run bytewax bytewax "$mode" "$n"
done
