#!/usr/bin/env bash
# The side-by-side benchmark suite in one command: every workload of benches/suite/workloads.py on
# every engine (this package in a release build, laminardb 0.17.0 from PyPI, Pathway, Bytewax,
# DuckDB as the batch reference), each engine in its own virtualenv, all on the same data, runs
# interleaved across engines; then the insert→subscriber latency of this package and 0.17.0, and
# this package's scaling from 1 to 2 timely workers. Prints one markdown report.
#
# Usage: benches/suite/run.sh [N_SCALE] [RUNS] [--kafka] [--only W1,W2,...] [--engines E1,E2,...]
#   N_SCALE  multiplies every workload's default size (workloads.DEFAULT_N); default 1
#   RUNS     runs per (workload, engine); the table shows the median; default 5
#   --kafka  also runs benches/python/run_kafka.sh (starts a broker via scripts/services.sh)
# Environment:
#   LAMINAR_BENCH_SKIP_BUILD=1   use the "ours" virtualenv as it is instead of building this package
#   LAMINAR_BENCH_WORKERS        workers for the streaming engines in the main table (default 1)
#   LAMINAR_BENCH_SCALE_WORKERS  worker counts for the scaling section (default "2"; "" skips it)
#   LAMINAR_BENCH_LATENCY_S      seconds of the latency measurement (default 5)
#   LAMINAR_BENCH_TIMEOUT        seconds before one run is stopped and reported failed (default 1800)
#   LAMINAR_BENCH_RESULTS        where raw results, report.md and summary.json go
#                                (default benches/suite/results)
set -euo pipefail
suite=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$suite/../python/venvs.sh"

scale=1
runs=5
kafka=0
only=""
engines="laminardb,upstream,pathway,bytewax,duckdb"
positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --kafka) kafka=1 ;;
    --only) only=$2; shift ;;
    --engines) engines=$2; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) positional+=("$1") ;;
  esac
  shift
done
[ ${#positional[@]} -ge 1 ] && scale=${positional[0]}
[ ${#positional[@]} -ge 2 ] && runs=${positional[1]}
workers=${LAMINAR_BENCH_WORKERS:-1}
scale_workers=${LAMINAR_BENCH_SCALE_WORKERS-2}
timeout_s=${LAMINAR_BENCH_TIMEOUT:-1800}
results=${LAMINAR_BENCH_RESULTS:-$suite/results}
skip_build=${LAMINAR_BENCH_SKIP_BUILD:-0}
if [ "$kafka" = 1 ] && [ "$skip_build" = 1 ]; then
  echo "run.sh: --kafka runs benches/python/run_kafka.sh, which builds this package; unset LAMINAR_BENCH_SKIP_BUILD" >&2
  exit 2
fi

venv_of() { case "$1" in laminardb) echo ours ;; *) echo "$1" ;; esac; }
py_of() { echo "$venvs/$(venv_of "$1")/bin/python"; }
IFS=, read -r -a engine_list <<<"$engines"

# Virtualenvs: every one gets duckdb and pyarrow (the reference answers are computed with DuckDB).
echo "== virtualenvs in $venvs" >&2
for e in "${engine_list[@]}"; do
  case "$e" in
    laminardb)
      if [ "$skip_build" = 1 ]; then echo "skipping the build of this package (LAMINAR_BENCH_SKIP_BUILD=1)" >&2; else build_ours; fi
      mk ours duckdb pyarrow ;;
    upstream) mk upstream "laminardb==0.17.0" duckdb pyarrow ;;
    pathway) mk pathway pathway duckdb pyarrow ;;
    bytewax) mk bytewax bytewax duckdb pyarrow ;;
    duckdb) mk duckdb duckdb pyarrow ;;
    *) echo "run.sh: unknown engine $e" >&2; exit 2 ;;
  esac
  [ -f "$suite/engine_$e.py" ] || { echo "run.sh: no adapter $suite/engine_$e.py" >&2; exit 2; }
done
[ -x "$(py_of laminardb)" ] || { echo "run.sh: the ours virtualenv is missing; run without LAMINAR_BENCH_SKIP_BUILD" >&2; exit 2; }

# Workloads and sizes.
mapfile -t plan < <(cd "$suite" && "$(py_of laminardb)" -c '
import sys, workloads
scale, only = float(sys.argv[1]), [w for w in sys.argv[2].split(",") if w]
for w in workloads.WORKLOADS:
    if not only or w in only:
        print(w, max(1, round(workloads.DEFAULT_N[w] * scale)))
' "$scale" "$only")
[ ${#plan[@]} -gt 0 ] || { echo "run.sh: no workload selected (--only $only)" >&2; exit 2; }

# Nexmark tables: generated once per size with this package's datagen connector, then cached.
for item in "${plan[@]}"; do
  read -r w n <<<"$item"
  case "$w" in q*) (cd "$suite" && "$(py_of laminardb)" workloads.py nexmark "$n" >/dev/null) ;; esac
done

mkdir -p "$results"
: >"$results/runs.jsonl"; : >"$results/scaling.jsonl"; : >"$results/latency.jsonl"; rm -f "$results/kafka.txt"
machine="$(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //')"
printf '{"scale": %s, "runs": %s, "workers": %s, "engines": "%s", "machine": "%s", "date": "%s"}\n' \
  "$scale" "$runs" "$workers" "$engines" "$machine" "$(date -u +%FT%TZ)" >"$results/meta.json"

# one ENGINE WORKLOAD N WORKERS OUTFILE: one run in a fresh process and directory; a run that dies
# or times out is recorded as failed.
one() {
  local d line rc=0
  d=$(mktemp -d)
  line=$(cd "$d" && timeout "$timeout_s" "$(py_of "$1")" "$suite/run_one.py" "$1" "$2" "$3" --workers "$4" 2>"$d/stderr" | tail -n 1) || rc=$?
  if [[ "$line" != "{"* ]]; then
    local why="exit code $rc"; [ "$rc" = 124 ] && why="timed out after ${timeout_s}s"
    line=$(printf '{"engine": "%s", "workload": "%s", "n": %s, "workers": %s, "rows": null, "rows_per_s": null, "seconds": null, "peak_rss_mb": null, "ok": false, "error": "failed: %s", "note": null}' "$1" "$2" "$3" "$4" "$why")
    tail -n 5 "$d/stderr" | sed "s/^/  [$1 $2] /" >&2
  fi
  echo "$line" >>"$5"
  echo "$line" | cut -c1-200 >&2
  rm -rf "$d"
}
unsupported() { grep -q "\"engine\": \"$1\", \"workload\": \"$2\".*\"error\": \"unsupported" "$results/runs.jsonl"; }

echo "== $runs runs of ${#plan[@]} workloads on ${engine_list[*]} (scale $scale, $workers worker(s))" >&2
for r in $(seq "$runs"); do
  for item in "${plan[@]}"; do
    read -r w n <<<"$item"
    for e in "${engine_list[@]}"; do
      # An engine that cannot express a workload says so on its first run; it is not asked again.
      if [ "$r" -gt 1 ] && unsupported "$e" "$w"; then continue; fi
      one "$e" "$w" "$n" "$workers" "$results/runs.jsonl"
    done
  done
done

if [ -n "$scale_workers" ] && [[ " ${engine_list[*]} " == *" laminardb "* ]]; then
  echo "== scaling: this package with $scale_workers workers" >&2
  for r in $(seq "$runs"); do
    for item in "${plan[@]}"; do
      read -r w n <<<"$item"
      for k in $scale_workers; do one laminardb "$w" "$n" "$k" "$results/scaling.jsonl"; done
    done
  done
fi

echo "== latency" >&2
for e in laminardb upstream; do
  if [[ " ${engine_list[*]} " == *" $e "* ]]; then
    (cd "$suite" && "$(py_of "$e")" latency.py "$e" --seconds "${LAMINAR_BENCH_LATENCY_S:-5}") >>"$results/latency.jsonl" ||
      printf '{"engine": "%s", "rate": 100000, "batches": 0, "error": "failed"}\n' "$e" >>"$results/latency.jsonl"
  fi
done

if [ "$kafka" = 1 ]; then
  echo "== kafka" >&2
  kn=$(awk -v s="$scale" 'BEGIN {n = int(1000000 * s); print (n < 1 ? 1 : n)}')
  "$root/benches/python/run_kafka.sh" "$kn" "$runs" | tee "$results/kafka.txt" >&2
fi

python3 "$suite/report.py" "$results"
echo "(raw results, report.md and summary.json in $results)" >&2
