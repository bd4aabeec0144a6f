#!/usr/bin/env bash
# JSON over Kafka → GROUP BY → Kafka, side by side: this package (release build) and Pathway, each
# in its own virtualenv, reading the same topic from a Kafka-protocol broker on loopback (started
# by scripts/services.sh unless LAMINAR_TEST_KAFKA_BOOTSTRAP is set). Runs alternate between the
# engines; every run's output topic is checked (100 keys whose counts add up to N) and runs whose
# output falls short are listed.
# Usage: benches/python/run_kafka.sh [N] [RUNS]
set -euo pipefail
source "$(dirname "$0")/venvs.sh"
N=${1:-1000000}
RUNS=${2:-5}
mk pathway pathway confluent-kafka
build_ours
mk ours confluent-kafka
if [ -z "${LAMINAR_TEST_KAFKA_BOOTSTRAP:-}" ]; then
  eval "$("$root/scripts/services.sh" start)"
  trap '"$root/scripts/services.sh" stop' EXIT
fi
bs=$LAMINAR_TEST_KAFKA_BOOTSTRAP
py() { "$venvs/$1/bin/python" "$here/kafka_groupby.py" "${@:2}"; }

topic="bench-in-$$-$RANDOM"
py ours produce "$bs" "$topic" "$N"
results=$(mktemp)
checks=$(mktemp)
incomplete=""
for i in $(seq "$RUNS"); do
  for engine in laminardb pathway; do
    venv=ours; [ "$engine" = pathway ] && venv=pathway
    out="bench-out-$engine-$$-$i"
    py "$venv" "$engine" "$bs" "$topic" "$out" "$N" 2>/dev/null | grep '^RESULT' >>"$results"
    if ! py ours verify "$bs" "$out" "$N" >>"$checks"; then incomplete="$incomplete $engine"; fi
  done
done
awk -v n="$N" '{r[$2]=r[$2] " " $3; if ($5 > m[$2]) m[$2] = $5} END {
  for (e in r) {
    k = split(substr(r[e], 2), v, " ");
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
    med[e] = v[int((k + 1) / 2)];
    printf "%-10s N=%d  median %10.0f msgs/s  (min %.0f, max %.0f)  peak RSS %d MB\n", e, n, med[e], v[1], v[k], m[e]
  }
  if (med["pathway"] > 0) printf "ratio laminardb / pathway: %.1fx\n", med["laminardb"] / med["pathway"]
}' "$results"
grep INCOMPLETE "$checks" || true
[ -z "$incomplete" ] || echo "runs whose output was incomplete:$incomplete"
rm -f "$results" "$checks"
