#!/usr/bin/env bash
# Checks (and on Debian as root, installs) what building LaminarDB needs besides Rust: the
# OpenSSL development files and pkg-config (librdkafka, under the Kafka connector, is built with
# TLS against the system's OpenSSL), and a C toolchain; for the tests also openssl (test
# certificates), the RabbitMQ, Postgres and MariaDB servers (connector tests run against private
# instances), npm (Azurite, the Azure Blob Storage stand-in) and Chromium (the live dashboard
# example is checked in a headless browser).
set -euo pipefail
missing=()
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev pkg-config)
command -v cc >/dev/null || missing+=(gcc)
command -v make >/dev/null || missing+=(make)
command -v openssl >/dev/null || missing+=(openssl)
command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v npm >/dev/null || missing+=(npm)
optional=()
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || optional+=(chromium)
[ ${#missing[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" "${optional[@]}" >/dev/null
elif [ ${#missing[@]} -eq 0 ]; then
  echo "not installed: ${optional[*]} (the browser test of the dashboard example is skipped)" >&2
else
  echo "missing build prerequisites: ${missing[*]} (Debian: apt-get install ${missing[*]})" >&2
  exit 1
fi
