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

once() { # venv engine -> rows/s of one run, in a fresh directory
  local d; d=$(mktemp -d)
  (cd "$d" && "$venvs/$1/bin/python" "$script" "$2" "$N") | awk '{print $2}'
  rm -rf "$d"
}
median() { sort -n | awk '{a[NR]=$1} END {printf "%12.0f", a[int((NR+1)/2)]}'; }

# Runs are interleaved (this, upstream, DuckDB, this, …) so that a slower or faster moment of the
# machine affects every engine alike.
ours=(); up=(); duck=()
for _ in $(seq "$RUNS"); do
  ours+=("$(once ours laminardb)")
  up+=("$(once upstream laminardb)")
  duck+=("$(once duckdb duckdb)")
done
m_ours=$(printf '%s\n' "${ours[@]}" | median)
m_up=$(printf '%s\n' "${up[@]}" | median)
m_duck=$(printf '%s\n' "${duck[@]}" | median)
echo "W1 GROUP BY 100 keys, N=$N, median of $RUNS interleaved runs"
printf '%-22s %s rows/s\n' "laminardb (this)" "$m_ours" "laminardb 0.17.0" "$m_up" "duckdb (batch)" "$m_duck"
awk -v a="$m_ours" -v b="$m_up" -v c="$m_duck" 'BEGIN {printf "ratio to laminardb 0.17.0: %.2fx; batch time vs DuckDB: %.2fx\n", a / b, c / a}'
