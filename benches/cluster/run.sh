#!/usr/bin/env bash
# Throughput of one pipeline split over processes: `laminardb run` (release build) with a
# generated source (rows split across the processes) feeding a GROUP BY and a join, as
# 1 process x 1 worker, 1 x 2, 2 x 1, 2 x 2 and 4 x 1 on loopback. Each configuration runs
# ROUNDS times; the table shows the median rows/s (rows / wall time of the slowest process,
# start-up and the cluster's connection included) and the largest peak RSS of one process.
# The "+ ckpt" rows take a checkpoint of the cluster every second (each process into its own
# directory), which shows what coordinated checkpoints cost.
#
#   benches/cluster/run.sh [ROWS] [ROUNDS]        (defaults: 4000000 rows, 3 rounds)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS="${1:-4000000}"
ROUNDS="${2:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/laminardb/target}"
cargo build --release --locked --bin laminardb -q
BIN="$CARGO_TARGET_DIR/release/laminardb"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cat > "$WORK/pipeline.sql" <<SQL
CREATE SOURCE trades (sym BIGINT, price BIGINT, volume BIGINT) WITH (
    connector = 'datagen', 'rows_per_second' = '0', 'max_rows' = '$ROWS', 'batch_size' = '8192',
    'fields.sym.min' = '0', 'fields.sym.max' = '99999', 'fields.price.min' = '1', 'fields.price.max' = '1000',
    'fields.volume.min' = '1', 'fields.volume.max' = '100');
CREATE SOURCE symbols (id BIGINT, sector BIGINT) WITH (
    connector = 'datagen', 'rows_per_second' = '0', 'max_rows' = '100000', 'fields.id.kind' = 'sequence',
    'fields.sector.min' = '0', 'fields.sector.max' = '9');
CREATE MATERIALIZED VIEW per_symbol AS
    SELECT sym, COUNT(*) AS n, SUM(volume) AS volume, MAX(price) AS hi FROM trades GROUP BY sym;
CREATE MATERIALIZED VIEW per_sector AS
    SELECT s.sector, COUNT(*) AS n, SUM(t.volume) AS volume FROM trades t JOIN symbols s ON t.sym = s.id
    GROUP BY s.sector;
SELECT COUNT(*) AS symbols, SUM(n) AS trades FROM per_symbol;
SELECT SUM(n) AS joined FROM per_sector;
SQL

# Runs PROCS processes of WORKERS workers once, listening from port BASE on; prints
# "seconds max_rss_kb".
run_once() {
  local procs=$1 workers=$2 base=$3 ckpt=$4 pids=() i
  : > "$WORK/hosts"
  for ((i = 0; i < procs; i++)); do
    echo "127.0.0.1:$((base + i))" >> "$WORK/hosts"
  done
  local start end
  start=$(date +%s.%N)
  for ((i = 0; i < procs; i++)); do
    local args=(run "$WORK/pipeline.sql" --quiet --workers "$workers")
    [ "$procs" -gt 1 ] && args+=(--process "$i" --hosts "$WORK/hosts")
    if [ "$ckpt" = 1 ]; then
      rm -rf "$WORK/db.$i"
      args+=(--db "$WORK/db.$i" --checkpoint-interval 1000)
    fi
    /usr/bin/time -f "%M" -o "$WORK/rss.$i" "$BIN" "${args[@]}" > "$WORK/out.$i" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  end=$(date +%s.%N)
  grep -q "| $ROWS" "$WORK/out.0" || { echo "process 0 did not count $ROWS trades:" >&2; cat "$WORK/out.0" >&2; exit 1; }
  local rss=0
  for ((i = 0; i < procs; i++)); do
    rss=$(( $(cat "$WORK/rss.$i") > rss ? $(cat "$WORK/rss.$i") : rss ))
  done
  echo "$(echo "$end - $start" | bc -l) $rss"
}

command -v bc >/dev/null || { echo "needs bc (apt-get install bc)"; exit 1; }
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)"; exit 1; }
printf "%-22s %14s %14s\n" "processes x workers" "rows/s" "peak RSS (MB)"
base=7400
for cfg in "1 1 0" "1 2 0" "2 1 0" "2 2 0" "4 1 0" "1 1 1" "2 1 1"; do
  set -- $cfg
  results=()
  for ((r = 0; r < ROUNDS; r++)); do
    base=$((base + 8))
    results+=("$(run_once "$1" "$2" "$base" "$3")")
  done
  median=$(printf "%s\n" "${results[@]}" | sort -n | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2)')
  secs=${median% *}
  rss=${median#* }
  label="$1 x $2"
  [ "$3" = 1 ] && label="$label + ckpt 1 s"
  printf "%-22s %14.0f %14.0f\n" "$label" "$(echo "$ROWS / $secs" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
done
