#!/usr/bin/env bash
# W1 side by side: this package (release build), the upstream laminardb 0.17.0 from PyPI and
# DuckDB, each in its own virtualenv, on the same data (../../../shared/bench/groupby_w1.py).
# Usage: benches/python/run_w1.sh [N] [RUNS]
set -euo pipefail
source "$(dirname "$0")/venvs.sh"
script="$root/../shared/bench/groupby_w1.py"
N=${1:-5000000}
RUNS=${2:-5}
mk upstream "laminardb==0.17.0" pyarrow
mk duckdb duckdb pyarrow
build_ours

run() { # venv engine label
  local best=()
  for _ in $(seq "$RUNS"); do
    local d; d=$(mktemp -d)
    (cd "$d" && "$venvs/$1/bin/python" "$script" "$2" "$N") | awk '{print $2}' >> "$d.out"
    best+=("$(cat "$d.out")"); rm -rf "$d" "$d.out"
  done
  printf '%s\n' "${best[@]}" | sort -n | awk -v l="$3" '{a[NR]=$1} END {printf "%-22s median %12.0f rows/s  (runs: %d)\n", l, a[int((NR+1)/2)], NR}'
}
echo "W1 GROUP BY 100 keys, N=$N"
run ours laminardb "laminardb (this)"
run upstream laminardb "laminardb 0.17.0"
run duckdb duckdb "duckdb (batch)"
